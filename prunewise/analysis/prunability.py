"""How much of a model a plan can touch, and what holds the rest whole (issue 14, item 5).

A channel group stays whole when its channels reach the model's input or output, meet an
operation without a channel rule, hold a single channel, have nothing to rank them by (no
norm scale under `bn-gamma`), or are tied by a residual addition while such groups are left
whole (paper A's default). `prunability` counts, over the output channels of every
producing layer (convolutions, linear layers, functional layers on stored weights), how many
sit in groups a plan may prune, and how many each reason holds whole; and the share of the
model's FLOPs that involve at least one prunable channel: an upper bound on what pruning can
remove. A FLOP of a node is counted as prunable with probability 1 - (1 - f_in)(1 - f_out),
f being the share of prunable channels the node reads and writes (f_out alone when the node
keeps its input's channels: a norm, a depthwise convolution, a pool).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from torch import fx

from prunewise.analysis.counting import node_flops
from prunewise.analysis.importance import IMPORTANCES, group_gamma
from prunewise.errors import PrunewiseError
from prunewise.graph.groups import ChannelGraph, ChannelGroup

__all__ = ["Blocker", "Prunability", "hold_reason", "percent", "prunability"]


def percent(share: float) -> str:
    """A share as a whole percent rounded down, so that "100%" means all of it and "0%" none
    (0.997 of the channels prunable, 3 held whole, reads 99%, not 100%)."""
    return f"{math.floor(share * 100 + 1e-9):d}%"


TIED = "tied by a residual addition (left whole unless pruned jointly)"
NO_SCALE = "no norm scale to rank by (importance bn-gamma)"
SINGLE = "a single channel"
NO_PRODUCER = "no producing layer"
LOW_SHARE = 0.2


@dataclass(frozen=True)
class Blocker:
    """A reason that holds channels whole, with the producer output channels it holds."""

    reason: str
    channels: int


@dataclass(frozen=True)
class Prunability:
    """Prunable share of a model's producer output channels and FLOPs (MACs per image).

    `blockers` are the reasons that hold the other channels whole, largest first.
    """

    channels: int
    prunable_channels: int
    flops: int
    prunable_flops: int
    blockers: tuple[Blocker, ...]
    prune_tied: bool
    importance: str

    @property
    def channel_share(self) -> float:
        """Prunable output channels / all output channels (0 for a model without any)."""
        return self.prunable_channels / self.channels if self.channels else 0.0

    @property
    def flops_share(self) -> float:
        """FLOPs that involve a prunable channel / all FLOPs (0 for a model without any)."""
        return self.prunable_flops / self.flops if self.flops else 0.0

    def summary(self, top: int = 3) -> str:
        """One line: the prunable shares and the largest reasons for the rest."""
        line = (
            f"prunable: {percent(self.channel_share)} of output channels "
            f"({self.prunable_channels:,} of {self.channels:,}), "
            f"{percent(self.flops_share)} of FLOPs"
        )
        held = [f"{b.reason}: {b.channels:,}" for b in self.blockers[:top]]
        return line + (f"; held whole by {'; '.join(held)}" if held else "")

    def warning(self) -> str | None:
        """A warning naming what would change it when less than a fifth is prunable."""
        if min(self.channel_share, self.flops_share) >= LOW_SHARE:
            return None
        reasons = [b.reason for b in self.blockers]
        hints = []
        if TIED in reasons:
            hints.append("prune tied groups jointly (--prune-tied; prune_tied=True)")
        if NO_SCALE in reasons:
            hints.append("rank channels by their weights (--importance l1)")
        if any("no channel rule" in r or "cannot follow" in r for r in reasons):
            hints.append(
                "register a rule for the op that blocks (prunewise.layers.register_layer for "
                "a module type, prunewise.graph.register_function_rule for a function or "
                "method; docs/method.md)"
            )
        what = "; ".join(hints) if hints else "nothing in prunewise's options changes it"
        return (
            f"only {percent(self.channel_share)} of the output channels and "
            f"{percent(self.flops_share)} of the FLOPs can be pruned; to prune more: {what}"
        )

    def record(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "channels": self.channels,
            "prunable_channels": self.prunable_channels,
            "flops": self.flops,
            "prunable_flops": self.prunable_flops,
            "channel_share": self.channel_share,
            "flops_share": self.flops_share,
            "prune_tied": self.prune_tied,
            "importance": self.importance,
            "blockers": [{"reason": b.reason, "channels": b.channels} for b in self.blockers],
            "warning": self.warning(),
        }


def hold_reason(
    graph: ChannelGraph, group: ChannelGroup, *, prune_tied: bool, importance: str
) -> str | None:
    """Why a plan leaves this group whole, or None when it may prune it."""
    if group.blocked is not None:
        return group.blocked
    if not group.producers:
        return NO_PRODUCER
    if group.size <= 1:
        return SINGLE
    if group.tied and not prune_tied:
        return TIED
    if importance == "bn-gamma" and group_gamma(graph, group.id) is None:
        return NO_SCALE
    return None


def _producer_channels(graph: ChannelGraph) -> np.ndarray:
    """Group number of every output channel of every producer (with repeats per producer)."""
    parts = [
        m.group
        for m in graph.maps
        if m.role == "out" or (m.role == "param" and m.kind == "out" and m.dim == 0)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _share(ok: np.ndarray, groups: np.ndarray | None) -> float:
    return float(ok[groups].mean()) if groups is not None and groups.size else 0.0


def _prunable_flops(graph: ChannelGraph, ok: np.ndarray) -> tuple[int, float]:
    modules = dict(graph.module.named_modules())
    total, prunable = 0, 0.0
    for node in graph.module.graph.nodes:
        flops = node_flops(modules, node)
        if not flops:
            continue
        total += flops
        out = graph.groups_at(node.name)
        arg = node.args[0] if node.args else None
        inp = graph.groups_at(arg.name) if isinstance(arg, fx.Node) else None
        f_out, f_in = _share(ok, out), _share(ok, inp)
        same = (
            out is not None and inp is not None and np.array_equal(np.unique(out), np.unique(inp))
        )
        prunable += flops * (f_out if same else 1 - (1 - f_in) * (1 - f_out))
    return total, prunable


def prunability(
    graph: ChannelGraph, *, prune_tied: bool = False, importance: str = "bn-gamma"
) -> Prunability:
    """What a plan under these settings may prune in `graph` (see the module docstring).

    Raises PrunewiseError for an unknown importance.
    """
    if importance not in IMPORTANCES:
        raise PrunewiseError(f"unknown importance {importance!r}; use one of {IMPORTANCES}")
    reasons = [
        hold_reason(graph, g, prune_tied=prune_tied, importance=importance) for g in graph.groups
    ]
    ok = np.array([r is None for r in reasons], dtype=bool)
    channels = _producer_channels(graph)
    held = Counter({r: 0 for r in reasons if r is not None})
    for group, count in zip(*np.unique(channels, return_counts=True), strict=True):
        if reasons[int(group)] is not None:
            held[reasons[int(group)]] += int(count)
    blockers = tuple(Blocker(r, n) for r, n in held.most_common() if n > 0)
    flops, prunable_flops = _prunable_flops(graph, ok)
    return Prunability(
        channels=int(channels.size),
        prunable_channels=int(ok[channels].sum()) if channels.size else 0,
        flops=flops,
        prunable_flops=round(prunable_flops),
        blockers=blockers,
        prune_tied=prune_tied,
        importance=importance,
    )
