"""How important each unit of a channel group is: the named choices a plan ranks by.

- "bn-gamma" (paper A): |gamma| of the group's norms (BatchNorm and the other norms with a
  scale), summed over the norms and over the tied channels of a unit; None for a group
  without any norm;
- "l1" / "l2": the L1 / L2 norm of each output channel's weights in the group's producers
  (convolutions, linear layers, depthwise convolutions, functional layers' stored weights),
  summed over the producers and over the tied channels of a unit; defined for every group
  that has a producer, so it works on networks without BatchNorm.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.graph.groups import ChannelGraph

__all__ = [
    "IMPORTANCES",
    "gamma_channels_per_unit",
    "group_gamma",
    "group_importance",
    "output_rows",
]

IMPORTANCES = ("bn-gamma", "l1", "l2")


def _add(total: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    np.add.at(total, index, values)


def _gamma_channels(graph: ChannelGraph, group_id: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(unit index, |gamma|) of every norm channel in the group: BatchNorm-like modules' and
    functional norms' scales."""
    found = []
    for cmap, pos in graph.maps_of(group_id, "norm"):
        weight = getattr(graph.module.get_submodule(cmap.module), "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 1:
            found.append((cmap.index[pos], weight.detach().abs().cpu().double().numpy()[pos]))
    for cmap, pos in graph.maps_of(group_id, "param"):
        if cmap.kind == "gamma":
            weight = operator.attrgetter(cmap.module)(graph.module)
            found.append((cmap.index[pos], weight.detach().abs().cpu().double().numpy()[pos]))
    return found


def group_gamma(graph: ChannelGraph, group_id: str) -> np.ndarray | None:
    """|gamma| per unit of a group, summed over its norms; None without any norm scale."""
    found = _gamma_channels(graph, group_id)
    if not found:
        return None
    total = np.zeros(graph.group(group_id).size, dtype=np.float64)
    for index, values in found:
        _add(total, index, values)
    return total


def gamma_channels_per_unit(graph: ChannelGraph, group_id: str) -> np.ndarray | None:
    """How many norm channels each unit's |gamma| (`group_gamma`) sums: 1 for a plain
    conv-BN group, more for tied groups (a residual sum's BNs) and grouped convolutions (a
    unit is a channel of every conv group); None without any norm scale."""
    found = _gamma_channels(graph, group_id)
    if not found:
        return None
    counts = np.zeros(graph.group(group_id).size, dtype=np.int64)
    for index, _values in found:
        _add(counts, index, np.ones(len(index), dtype=np.int64))
    return counts


def output_rows(module: nn.Module) -> torch.Tensor:
    """A producer's weights as one row per output channel (Conv, ConvTranspose, Linear)."""
    w = module.weight.detach()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        g = module.groups
        w = w.reshape(g, w.shape[0] // g, w.shape[1], -1).transpose(1, 2)
        return w.reshape(module.out_channels, -1)
    return w.reshape(w.shape[0], -1)


def _norms(rows: torch.Tensor, kind: str) -> np.ndarray:
    rows = rows.cpu().double()
    values = rows.abs().sum(1) if kind == "l1" else rows.pow(2).sum(1).sqrt()
    return values.numpy()


def group_importance(graph: ChannelGraph, group_id: str, kind: str) -> np.ndarray | None:
    """Importance per unit of a group under `kind` (see IMPORTANCES); None when the group has
    nothing to rank by (no norm scale for bn-gamma, no producer for l1/l2)."""
    if kind not in IMPORTANCES:
        raise PrunewiseError(f"unknown importance {kind!r}; use one of {', '.join(IMPORTANCES)}")
    if kind == "bn-gamma":
        return group_gamma(graph, group_id)
    total = np.zeros(graph.group(group_id).size, dtype=np.float64)
    found = False
    for role in ("out", "depthwise"):
        for cmap, pos in graph.maps_of(group_id, role):
            rows = output_rows(graph.module.get_submodule(cmap.module))
            _add(total, cmap.index[pos], _norms(rows, kind)[pos])
            found = True
    for cmap, pos in graph.maps_of(group_id, "param"):
        if cmap.kind == "out":
            weight = operator.attrgetter(cmap.module)(graph.module).detach()
            rows = weight.reshape(weight.shape[0], -1)
            _add(total, cmap.index[pos], _norms(rows, kind)[pos])
            found = True
    return total if found else None
