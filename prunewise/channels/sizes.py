"""Sizes read from tensors: which channels a number in the graph counts.

`x.shape`, `x.size()` and `x.size(d)` turn a tensor's dimensions into values of the graph;
after pruning they change with the tensor. A size read at a channel dimension *counts* those
channels. Where such a count sizes another tensor's channels (`out.reshape(b, n, c)` with `c`
read from `x`), surgery keeps the two numbers equal only if both sets of channels lose the
same count: the count's channels are tied to the channels it sizes, position by position,
when it counts them one for one, and both are blocked when it was computed from them
(`c // heads`, `c * 2`). A count of the very channels it sizes (`x.view(b, c, -1)`) needs
nothing: it follows the pruned tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import fx

__all__ = ["Count", "check_count", "count_of", "shape_dims", "size_channels"]


@dataclass(frozen=True, eq=False)
class Count:
    """A number in the graph that counts channels `ids`; `exact` when it equals their number
    (a size read directly), not when computed from one."""

    ids: np.ndarray
    exact: bool = True


def shape_dims(state: Any, node: fx.Node, value: Any) -> None:
    """Record that `node` is the shape of tensor `value` (x.shape, x.size())."""
    if isinstance(value, fx.Node):
        shape = value.meta.get("tensor_meta")
        ndim = len(getattr(shape, "shape", ()))
        state.shape_of[node] = (value, tuple(range(ndim)))


def size_channels(op: Any, value: Any, dim: Any) -> None:
    """Record that `op.node` is the size of dimension `dim` of tensor `value`."""
    layout, shape = op.layout(value), op.shape(value)
    if layout is None or shape is None or not isinstance(dim, int):
        return
    dim %= len(shape)
    if dim in layout.dims:
        axis = layout.dims.index(dim)
        line = np.moveaxis(layout.ids, axis, 0).reshape(layout.ids.shape[axis], -1)[:, 0]
        op.state.counts[op.node] = Count(line)


def count_of(state: Any, value: Any) -> Count | None:
    """The channels a graph value counts, or None."""
    return state.counts.get(value) if isinstance(value, fx.Node) else None


def check_count(op: Any, value: Any, line: np.ndarray) -> None:
    """A size argument `value` of `op` sizes the channels `line` (one id per index): tie them
    to the channels it counts, or block both (see the module docstring)."""
    count = count_of(op.state, value)
    if count is None:
        return
    op.checked.add(value)
    find = op.state.channels.find
    counted, sized = find(count.ids), find(line)
    if np.isin(counted, sized).all():
        return
    if count.exact and counted.size == sized.size:
        op.tie(count.ids, line)
        return
    reason = f"{op.what()} sizes them by {value.name}, a number computed from other channels"
    op.block(np.concatenate([count.ids, line]), reason)
