"""Paper A fig. 20: accuracy when the g-th |gamma| group of every prunable BN is removed.

Each prunable group's channels are sorted by |gamma| (ascending) and split into G nearly equal
parts by rank quantile (part g = 1 holds the smallest |gamma|, g = G the largest). For
each g, part g is removed from every prunable group at once and the model is evaluated without
fine-tuning. Removal uses `zeroed_copy`, whose outputs equal those of the physically pruned
model.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prunewise.analysis.sparsity import group_gamma
from prunewise.errors import PrunewiseError
from prunewise.graph.groups import ChannelGraph, build_channel_graph
from prunewise.progress import progress_bar
from prunewise.prune.plan import GroupDecision, PruningPlan
from prunewise.prune.surgery import zeroed_copy
from prunewise.train.loop import evaluate

__all__ = ["gamma_parts", "group_experiment"]


def gamma_parts(gamma: np.ndarray, groups: int) -> list[np.ndarray]:
    """Channel indices by ascending |gamma|, split into `groups` rank quantiles (some empty)."""
    if not (isinstance(groups, int | np.integer) and not isinstance(groups, bool) and groups >= 1):
        raise PrunewiseError(f"the number of groups G must be an integer >= 1, got {groups!r}")
    order = np.argsort(np.abs(np.asarray(gamma)), kind="stable")
    bounds = (np.arange(int(groups) + 1) * len(order)) // int(groups)
    return [order[a:b].astype(np.int64) for a, b in itertools.pairwise(bounds)]


def _selected(graph: ChannelGraph, prune_tied: bool) -> dict[str, np.ndarray]:
    """Group id -> |gamma| for the groups the experiment prunes."""
    out: dict[str, np.ndarray] = {}
    for g in graph.groups:
        if not g.prunable or (g.tied and not prune_tied):
            continue
        gamma = group_gamma(graph, g.id)
        if gamma is not None:
            out[g.id] = gamma
    return out


def _plan_without(
    graph: ChannelGraph, parts: dict[str, list[np.ndarray]], g: int
) -> PruningPlan | None:
    """The plan removing part g (0-based) of every selected group; None if nothing is removed."""
    decisions = []
    for gid, split in parts.items():
        size = graph.group(gid).size
        removed = split[g]
        if removed.size == 0 or removed.size >= size:
            continue
        kept = np.setdiff1d(np.arange(size), removed)
        decisions.append(GroupDecision(gid, size, tuple(int(i) for i in kept), reason="fig20"))
    if not decisions:
        return None
    return PruningPlan(tuple(decisions), graph.input_shape, {"method": "group_experiment"})


class _Counting:
    """Wraps a loader and counts the examples it yields."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.count = 0

    def __iter__(self) -> Iterator:
        for x, y in self.loader:
            self.count += int(y.shape[0])
            yield x, y


def _input_shape(loader: Iterable) -> tuple[int, ...]:
    for x, _ in loader:
        return tuple(int(d) for d in x.shape[1:])
    raise PrunewiseError("cannot run the group experiment on an empty dataset")


def group_experiment(
    model: nn.Module,
    loader: DataLoader,
    *,
    groups: int = 50,
    device: torch.device | str | None = None,
    input_shape: tuple[int, ...] | None = None,
    progress: bool = True,
    prune_tied: bool = False,
) -> dict[str, Any]:
    """Paper A fig. 20: accuracy (%) with |gamma| part g removed from every prunable group.

    Returns {"G", "images", "baseline_acc", "accuracy" (g = 1..G), "pruned_groups" (group ids
    in graph order)}; the caller adds "split". Groups tied by a residual addition stay whole
    unless `prune_tied` (as in the paper). Part g of a group of n channels holds the channels of
    rank floor((g-1)n/G) to floor(gn/G) - 1, so every g is the same quantile of |gamma| in
    every layer; a group with fewer than G channels has empty parts, spread evenly over g, and
    for those g nothing is removed from it. A part holding every channel of a group (G = 1, or
    a one-channel group) is not removed either, since a group cannot lose all its channels.
    `input_shape` defaults to the shape of the loader's first batch; `device` to the model's.
    `model` is unchanged.
    """
    if not (isinstance(groups, int) and not isinstance(groups, bool) and groups >= 1):
        raise PrunewiseError(f"the number of groups G must be an integer >= 1, got {groups!r}")
    shape = tuple(input_shape) if input_shape is not None else _input_shape(loader)
    graph = build_channel_graph(model, shape)
    selected = _selected(graph, prune_tied)
    if not selected:
        raise PrunewiseError(
            "the group experiment needs at least one prunable group with BatchNorm; "
            "this model has none"
        )
    param = next(graph.module.parameters(), None)
    dev = torch.device(device) if device is not None else getattr(param, "device", None)
    dev = dev or torch.device("cpu")
    parts = {gid: gamma_parts(gamma, groups) for gid, gamma in selected.items()}

    counting = _Counting(loader)
    base = copy.deepcopy(graph.module).to(dev)
    baseline = evaluate(base, counting, dev)  # type: ignore[arg-type]
    del base

    steps = progress_bar(
        range(groups), desc="group experiment", unit="group", leave=False, show=progress
    )
    accuracy = []
    for g in steps:
        plan = _plan_without(graph, parts, g)
        if plan is None:
            accuracy.append(baseline)
            continue
        pruned = zeroed_copy(graph, plan).to(dev)
        accuracy.append(evaluate(pruned, loader, dev))
        del pruned
    return {
        "G": groups,
        "images": counting.count,
        "baseline_acc": baseline,
        "accuracy": accuracy,
        "pruned_groups": list(selected),
    }
