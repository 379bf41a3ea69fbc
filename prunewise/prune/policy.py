"""Layer-wise refined policy (paper A): pruning ratio per group from its input sparsity.

Eq. 4: P = S if S <= alpha else beta * S. Channels with the lowest |gamma| go first.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from prunewise.analysis.importance import IMPORTANCES, group_importance
from prunewise.analysis.sparsity import ModelAnalysis, analyze
from prunewise.errors import PrunewiseError
from prunewise.graph.groups import ChannelGraph, build_channel_graph
from prunewise.prune.plan import GroupDecision, PruningPlan
from prunewise.settings import Settings, setting

__all__ = [
    "POLICIES",
    "RefinedConfig",
    "channels_to_keep",
    "check_gamma",
    "decide",
    "gamma_order",
    "keep_split_parts",
    "refined_plan",
    "uniform_keep",
    "uniform_plan",
]


def _eq4(s: float, alpha: float, beta: float) -> float:
    """Paper A eq. 4 (discontinuous at alpha)."""
    return s if s <= alpha else beta * s


def _continuous(s: float, alpha: float, beta: float) -> float:
    """Eq. 4's slopes joined at alpha: P = S up to alpha, then alpha + beta * (S - alpha)."""
    return s if s <= alpha else alpha + beta * (s - alpha)


POLICIES: dict[str, Callable[[float, float, float], float]] = {
    "eq4": _eq4,
    "continuous": _continuous,
}


@dataclass(frozen=True)
class RefinedConfig(Settings):
    """Settings of the layer-wise refined policy. `scheme(1)` and `scheme(2)` are the paper's."""

    section: ClassVar[str] = "policy"

    alpha: float = setting(
        0.5, "eq. 4 sparsity threshold", low=0, high=1, low_open=True, flag="--alpha"
    )
    beta: float = setting(0.5, "eq. 4 multiplier", low=0, high=1, low_open=True, flag="--beta")
    policy: str = setting(
        "eq4",
        "eq4 = paper A's rule; continuous = its slopes joined at alpha",
        choices=tuple(POLICIES),
        flag="--policy",
    )
    min_channels: int = setting(
        2, "never keep fewer channels", low=1, high=65536, flag="--min-channels"
    )
    round_to: int = setting(
        1,
        "kept channel counts become multiples of N, or of a DPU size's / board's channel "
        "parallelism (B4096, zcu102: 16)",
        low=1,
        high=4096,
        flag="--round-to",
        metavar="N|DPU",
    )
    reference_compat: bool = setting(
        False, "remove floor(N*P)+1 channels as the authors' code does", flag="--reference-compat"
    )
    min_sparsity: float = setting(
        0.0,
        "leave groups whose input sparsity is below this (authors' VGG code: 0.1)",
        low=0,
        high=1,
        high_open=True,
        flag="--min-sparsity",
    )
    prune_tied: bool = setting(
        False, "also prune groups tied by residual additions, jointly", flag="--prune-tied"
    )
    importance: str = setting(
        "bn-gamma",
        "what ranks the channels: bn-gamma (paper A: BatchNorm |gamma|), l1 or l2 (weight "
        "norms of the producing layers, for networks without BatchNorm too)",
        choices=IMPORTANCES,
        flag="--importance",
    )
    compensate: bool = setting(
        False,
        "fold the mean output of each removed channel (on the sparsity images) into the next "
        "layer's bias: exact for a channel with BatchNorm gamma 0 (prunewise.prune.compensate)",
        flag="--compensate",
    )
    fixed_ratio: float | None = setting(
        None,
        "remove this fraction of every prunable group whatever its input sparsity, instead of "
        "eq. 4 (for activations without exact zeros: GELU, SiLU, hard-swish); --min-sparsity "
        "does not apply",
        kind="float",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
        optional=True,
        flag="--ratio",
        metavar="R",
    )

    @classmethod
    def scheme(cls, number: int, **overrides: object) -> RefinedConfig:
        """Paper A's scheme 1 (alpha = beta = 0.5) or scheme 2 (alpha = beta = 1)."""
        presets = {1: (0.5, 0.5), 2: (1.0, 1.0)}
        if number not in presets:
            raise PrunewiseError(f"scheme must be 1 or 2, got {number!r}")
        alpha, beta = presets[number]
        return cls(alpha=alpha, beta=beta, **overrides)  # type: ignore[arg-type]

    def ratio(self, sparsity: float | None) -> float:
        """Pruning ratio for a group of this input sparsity (`fixed_ratio` when set, whatever
        the sparsity). Raises PrunewiseError for an unmeasured group (None) under eq. 4."""
        if self.fixed_ratio is not None:
            return self.fixed_ratio
        if sparsity is None:
            raise PrunewiseError("eq. 4 needs the group's input sparsity")
        return float(POLICIES[self.policy](sparsity, self.alpha, self.beta))


def channels_to_keep(
    n: int,
    ratio: float,
    *,
    min_channels: int = 2,
    round_to: int = 1,
    reference_compat: bool = False,
) -> int:
    """How many of n channels stay at this pruning ratio (n when the group is left alone).

    Removes floor(n * ratio) (floor + 1 with `reference_compat`, as the authors' code does);
    never keeps fewer than max(min_channels, round_to); rounds the kept count up to a multiple
    of `round_to`. With `reference_compat` a group that would fall below the minimum is skipped,
    as in the authors' code; otherwise it is clamped to the minimum.
    """
    if n <= 0 or not 0 <= ratio <= 1:
        raise ValueError(f"need n > 0 and ratio in [0, 1], got n={n}, ratio={ratio}")
    remove = math.floor(n * ratio + 1e-9)
    if reference_compat and ratio > 0:
        remove += 1
    keep = n - remove
    floor_keep = max(min_channels, round_to if round_to > 1 else 1)
    if keep < floor_keep:
        if reference_compat:
            return n
        keep = floor_keep
    keep = math.ceil(keep / round_to) * round_to
    return min(keep, n)


def gamma_order(gamma: np.ndarray) -> np.ndarray:
    """Channel indices from least to most important (ascending |gamma|, stable)."""
    return np.argsort(np.abs(gamma), kind="stable")


def _keep_top(gamma: np.ndarray, keep: int) -> tuple[int, ...]:
    return tuple(sorted(int(i) for i in gamma_order(gamma)[len(gamma) - keep :]))


def check_gamma(graph: ChannelGraph) -> None:
    """Raises PrunewiseError, saying why and what would work, when prunable groups of `graph`
    exist but none has a norm scale to rank by |gamma| (paper A's importance, bn-gamma). A
    graph without a prunable group passes: its plan removes nothing, each group with the
    reason it is held whole (`analyze --all-groups` lists them)."""
    prunable = [g for g in graph.groups if g.prunable]
    if not prunable or any(group_importance(graph, g.id, "bn-gamma") is not None for g in prunable):
        return
    raise PrunewiseError(
        "no BatchNorm (nor another norm with a per-channel scale) follows a prunable layer, "
        "so there is nothing to prune by |gamma| (paper A's importance, bn-gamma); rank "
        "channels by their weights instead (importance='l1' or 'l2', --importance l1), or "
        "pick a model with BatchNorm"
    )


def _importances(graph: ChannelGraph, kind: str) -> dict[str, np.ndarray | None]:
    """Importance per unit of every prunable group; refuses bn-gamma on a network without
    any norm scale (`check_gamma`)."""
    if kind == "bn-gamma":
        check_gamma(graph)
    return {g.id: group_importance(graph, g.id, kind) if g.prunable else None for g in graph.groups}


def keep_split_parts(
    graph: ChannelGraph,
    decisions: Sequence[GroupDecision],
    scores: Mapping[str, np.ndarray | None],
) -> tuple[GroupDecision, ...]:
    """The decisions, with at least one channel kept in every part of every split of a channel
    dimension (torch.split / chunk, as ShuffleNet-V2's `x.chunk(2, dim=1)` after a channel
    shuffle): the code after a split takes as many parts as before, so a part cannot go whole.
    A part the decisions would empty keeps its most important unit (by `scores`, else its
    first), which removes one channel fewer than the policy asked; the decision's reason says
    so. Decisions come back in their order."""
    kept = {d.group: set(d.kept) for d in decisions}
    added: dict[str, int] = {}
    for patch in graph.patches:
        if patch.kind != "split":
            continue
        for a, b in itertools.pairwise((0, *patch.bounds)):
            units = [
                (graph.groups[int(patch.group[p])].id, int(patch.index[p])) for p in range(a, b)
            ]
            if not units or any(g not in kept or u in kept[g] for g, u in units):
                continue
            g, u = max(units, key=lambda gu: _score_of(scores.get(gu[0]), gu[1]))
            kept[g].add(u)
            added[g] = added.get(g, 0) + 1
    return tuple(
        replace(d, kept=tuple(kept[d.group]), reason=f"{d.reason}; +{added[d.group]} kept so "
                "that no part of a split is empty") if d.group in added else d
        for d in decisions
    )  # fmt: skip


def _score_of(score: np.ndarray | None, unit: int) -> float:
    """A unit's importance, or the order of the units (the first first) without one."""
    return float(np.abs(score[unit])) if score is not None else -float(unit)


def decide(analysis: ModelAnalysis, config: RefinedConfig, *, scale: float = 1.0) -> PruningPlan:
    """Eq. 4 on every prunable group of an analysis: the pruning plan (channels ranked by
    `config.importance`). With `config.fixed_ratio` every prunable group loses that fraction
    instead, measured or not (a uniform plan, as `uniform_plan`, with the policy's rounding).

    `scale` multiplies every group's eq. 4 ratio (capped at 1): paper A's allocation across
    layers at another overall strength, e.g. to meet a FLOPs target (bench/compare_peers.py).
    Raises PrunewiseError for a negative scale.
    """
    if not math.isfinite(scale) or scale < 0:
        raise PrunewiseError(f"scale must be a finite number >= 0, got {scale!r}")
    scores = _importances(analysis.graph, config.importance)
    decisions = []
    for g in analysis.groups:
        reason, ratio, keep = "", 0.0, g.channels
        s = g.sparsity_mean
        score = scores.get(g.group)
        if not g.prunable:
            reason = f"fixed: {g.blocked or 'no producing layer'}"
        elif score is None:
            reason = "fixed: no BatchNorm (bn-gamma)"
        elif g.tied and not config.prune_tied:
            reason = "fixed: tied by a residual addition (prune_tied to prune jointly)"
        elif s is None and config.fixed_ratio is None:
            reason = "fixed: no consuming layer to measure"
        elif s is not None and config.fixed_ratio is None and s < config.min_sparsity:
            reason = f"fixed: sparsity {s:.3f} < min_sparsity"
        else:
            ratio = min(1.0, scale * config.ratio(s))
            keep = channels_to_keep(
                g.channels,
                ratio,
                min_channels=config.min_channels,
                round_to=config.round_to,
                reference_compat=config.reference_compat,
            )
            if config.fixed_ratio is None:
                reason = f"{config.policy}: S={s:.3f} -> P={ratio:.3f}"
            else:
                reason = f"uniform: P={ratio:.3f} (--ratio)"
            if scale != 1.0:
                reason += f" (x {scale:.3g})"
            if config.round_to > 1:
                unrounded = channels_to_keep(
                    g.channels,
                    ratio,
                    min_channels=config.min_channels,
                    reference_compat=config.reference_compat,
                )
                if keep != unrounded:
                    capped = keep % config.round_to != 0  # the next multiple passes the size
                    reason += (
                        f"; keeps {keep} of {g.channels}, not {unrounded}: "
                        + (
                            f"the next multiple of {config.round_to} is more than the group has"
                            if capped
                            else f"rounded up to a multiple of {config.round_to}"
                        )
                        + " (--round-to)"
                    )
        kept = _keep_top(score, keep) if score is not None else tuple(range(g.channels))
        decisions.append(GroupDecision(g.group, g.channels, kept, ratio, s, reason))
    policy = {"method": "refined", **asdict(config), "images": analysis.images}
    if scale != 1.0:
        policy["scale"] = scale
    decisions = keep_split_parts(analysis.graph, decisions, scores)
    return PruningPlan(decisions, analysis.graph.input_shape, policy)


def refined_plan(
    model: nn.Module | ChannelGraph,
    images: torch.Tensor,
    config: RefinedConfig | None = None,
) -> PruningPlan:
    """Measure sparsity on `images` and apply the refined policy: the pruning plan."""
    config = RefinedConfig.given(config)
    return decide(analyze(model, images), config)


def uniform_keep(n: int, ratio: float, *, min_channels: int = 1) -> int:
    """How many of n channels a uniform `ratio` keeps: floor(n * (1 - ratio)), so that at
    least the fraction `ratio` goes (the count Torch-Pruning's MetaPruner keeps, which makes
    the two comparable at one ratio); never fewer than min_channels, never more than n.
    Paper A's policy rounds the other way (`channels_to_keep`: floor(n * ratio) removed)."""
    if n <= 0 or not 0 <= ratio <= 1:
        raise ValueError(f"need n > 0 and ratio in [0, 1], got n={n}, ratio={ratio}")
    return min(n, max(min_channels, math.floor(n * (1 - ratio) + 1e-9)))


def uniform_plan(
    model: nn.Module | ChannelGraph,
    ratio: float,
    *,
    input_shape: tuple[int, ...] | None = None,
    prune_tied: bool = True,
    min_channels: int = 1,
    importance: str = "bn-gamma",
) -> PruningPlan:
    """Remove the same fraction of the least important channels from every prunable group
    (ranked by `importance`: see prunewise.analysis.importance); each group keeps
    `uniform_keep(size, ratio)` channels. Raises PrunewiseError for bn-gamma on a network
    without norm scales."""
    real = isinstance(ratio, numbers.Real) and not isinstance(ratio, bool)
    if not (real and 0 <= ratio < 1):
        raise PrunewiseError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if isinstance(model, ChannelGraph):
        graph = model
    elif input_shape is None:
        raise PrunewiseError("uniform_plan needs input_shape when given a module")
    else:
        graph = build_channel_graph(model, input_shape)
    scores = _importances(graph, importance)
    decisions = []
    for g in graph.groups:
        score = scores[g.id] if prune_tied or not g.tied else None
        if score is None:
            decisions.append(GroupDecision(g.id, g.size, tuple(range(g.size)), 0.0, None, "fixed"))
            continue
        keep = uniform_keep(g.size, ratio, min_channels=min_channels)
        decisions.append(
            GroupDecision(g.id, g.size, _keep_top(score, keep), ratio, None, "uniform")
        )
    policy = {
        "method": "uniform",
        "ratio": ratio,
        "prune_tied": prune_tied,
        "importance": importance,
    }
    return PruningPlan(keep_split_parts(graph, decisions, scores), graph.input_shape, policy)
