"""Functional calls that stand for a layer: F.conv2d, F.linear, F.batch_norm ... whose weights
are tensors of the graph (get_attr). They appear where the tracer inlined a module (a subclass
that overrides forward, timm's layers); their channels follow the layer's rule and their
weight tensors are sliced with the channels (parameter maps). Also their FLOPs (fvcore).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from math import prod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from prunewise.channels.layout import Layout
from prunewise.channels.ops import Patch
from prunewise.layers.norm import group_norm_units
from prunewise.layers.simple import (
    channel_shuffle,
    pixel_shuffle,
    pixel_unshuffle,
    upsample_flops,
)
from prunewise.layers.weighted import tie_groups

__all__ = [
    "FUNCTIONAL_FLOPS",
    "FUNCTIONAL_FLOPS_BY_NAME",
    "FUNCTIONAL_LAYERS",
    "METHOD_FLOPS",
    "functional_flops",
]


def _tensor(op, index: int, key: str) -> fx.Node | None:
    value = op.arg(index, key)
    return value if isinstance(value, fx.Node) else None


def _param(op, node: fx.Node | None, dim: int, ids: np.ndarray, kind: str = "") -> bool:
    """Slice a get_attr tensor with channels `ids` along `dim`; False for a computed one."""
    if node is None:
        return True
    if node.op != "get_attr":
        return False
    op.param(str(node.target), dim, ids, kind)
    return True


_ELEMENTWISE = frozenset(
    {"add", "sub", "mul", "truediv", "div", "sqrt", "rsqrt", "pow", "abs", "neg", "clamp",
     "reciprocal", "square"}
)  # fmt: skip
_REDUCTIONS = frozenset({"mean", "var", "std", "sum", "amax", "amin", "var_mean", "std_mean"})
_RESHAPES = frozenset({"reshape", "view", "reshape_as", "view_as", "flatten"})


def _name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _row_dim(shape: tuple[int, ...] | None, rows: int) -> int | None:
    """Where a tensor computed from a (rows, ...) weight keeps its rows: dimension 0, or 1 of
    a (1, rows, ...) view (timm's StdConv2d batch-normalises the weight so)."""
    if shape and shape[0] == rows:
        return 0
    if shape and len(shape) > 1 and shape[0] == 1 and shape[1] == rows:
        return 1
    return None


def _row_wise(op, node: fx.Node, rows: int) -> bool:
    """Whether `node` computes each row (output channel) of a weight from that row alone."""
    name, shape = _name(node), op.shape(node.args[0]) if node.args else None
    if name == "getitem":  # of var_mean / std_mean's pair, not an index into the weight
        return isinstance(node.args[0], fx.Node) and _name(node.args[0]) in _REDUCTIONS
    if name in _ELEMENTWISE:
        return True
    row = _row_dim(shape, rows)
    if name in _RESHAPES:
        return row is not None and _row_dim(op.shape(node), rows) is not None
    if name in _REDUCTIONS:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else dims
        return (
            row is not None
            and isinstance(dims, tuple | list)
            and all(isinstance(d, int) and d % len(shape) != row for d in dims)
        )
    return name == "batch_norm" and row == 1  # over dim 1 of (1, rows, -1): row by row


def _row_counts(op, node: fx.Node, rows: int) -> list[tuple[int, ...]]:
    """Where a reshape of a weight names its row count as a literal (timm's
    `w.reshape(1, self.out_channels, -1)`): surgery rewrites it."""
    if _name(node) not in ("reshape", "view"):
        return []
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], tuple | list):
        return [(1, i) for i, s in enumerate(sizes[0]) if s == rows]
    return [(1 + i,) for i, s in enumerate(sizes) if s == rows]


def _stored_weight(op, weight: fx.Node) -> tuple[fx.Node, list[fx.Node], list] | None:
    """(W, per-row tensors, reshapes naming the row count) when `weight` is the stored tensor
    W or is computed from W alone, row by row (weight standardisation: BiT's StdConv2d,
    NFNet's ScaledStdConv2d with its gain of shape (rows, 1, 1, 1), a user's WSConv2d); None
    for any other computed weight."""
    if weight.op == "get_attr":
        return weight, [], []
    shape = op.shape(weight)
    if not shape:
        return None
    stored: fx.Node | None = None
    scales: list[fx.Node] = []
    counts: list[tuple[fx.Node, tuple[int, ...]]] = []
    todo, seen = [weight], set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "get_attr":
            got = op.shape(node)
            if got == shape and stored in (None, node):
                stored = node
            elif got and got[0] == shape[0] and prod(got) == shape[0]:
                scales.append(node)
            elif got is None or prod(got) != 1:
                return None
        elif node.op not in ("call_function", "call_method") or not _row_wise(op, node, shape[0]):
            return None
        else:
            counts += [(node, path) for path in _row_counts(op, node, shape[0])]
            todo.extend(node.all_input_nodes)
    return (stored, scales, counts) if stored is not None else None


def _conv(op) -> Layout | None:
    weight, bias = _tensor(op, 1, "weight"), _tensor(op, 2, "bias")
    shape = op.shape(weight)
    groups = op.arg(6, "groups", 1)
    x = op.channels(op.arg(0), 1)
    found = _stored_weight(op, weight) if weight is not None else None
    if shape is None or not isinstance(groups, int) or found is None:
        reason = f"{op.what()} computes its weight in a way prunewise does not follow"
        op.unknown(reason)
        return op.fresh_blocked(reason)
    computed = found[0] is not weight
    weight, scales, counts = found
    cout, cin = shape[0], shape[1] * groups
    if x is None:
        x = op.fresh(cin, producer=False)
        op.block(x, f"{op.what()} reads channels it cannot follow")
    op.record("call", x)
    if groups == 1:
        out = op.fresh(cout)
        _param(op, weight, 1, x)
    elif groups == cin and cout % cin == 0:  # depthwise: `groups` becomes the kept count
        out = np.repeat(x, cout // cin)
        where = (6,) if len(op.node.args) > 6 else ("groups",)
        op.patch(Patch(op.node.name, "int", where, x))
    else:
        tie_groups(op, x, groups)
        out = op.fresh(cout)
        tie_groups(op, out, groups)
        _param(op, weight, 1, x.reshape(groups, -1)[0])
    _param(op, weight, 0, out, "out")
    _param(op, bias, 0, out)
    for scale in scales:
        _param(op, scale, 0, out)
    for node, path in counts:
        op.patch(Patch(node.name, "int", path, out))
    if computed and shape[1] > 1:
        op.mixed(x, f"{op.what()} standardises its weight over the input channels")
    return Layout((1,), out)


def _linear(op) -> Layout | None:
    weight, bias = _tensor(op, 1, "weight"), _tensor(op, 2, "bias")
    last = len(op.shape(op.arg(0))) - 1
    x = op.channels(op.arg(0), last)
    if weight is None or weight.op != "get_attr":
        return op.unknown(f"{op.what()} computes its weight (prunewise follows only stored ones)")
    if x is None:
        x = op.fresh(op.shape(weight)[1], producer=False)
        op.block(x, f"{op.what()} reads features it cannot follow")
    op.record("call", x, dim=last)
    out = op.fresh(op.shape(weight)[0])
    _param(op, weight, 0, out, "out")
    _param(op, weight, 1, x)
    _param(op, bias, 0, out)
    return Layout((last,), out)


def _per_channel(
    op, names: tuple[tuple[int, str], ...], dim: int = 1, *, norm: bool = True
) -> np.ndarray | None:
    """Slice a per-channel function's tensors with its input's channels (a norm's weight is
    its scale, "gamma", to the bn-gamma importance)."""
    ids = op.channels(op.arg(0), dim)
    if ids is None:
        return None
    for index, key in names:
        kind = "gamma" if norm and key == "weight" else ""
        if not _param(op, _tensor(op, index, key), 0, ids, kind):
            op.unknown(f"{op.what()} computes its per-channel tensors")
            return None
    return ids


def _batch_norm(op) -> Layout | None:
    names = ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
    ids = _per_channel(op, names)
    return None if ids is None else Layout((1,), ids)


def _instance_norm(op) -> Layout | None:
    names = ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
    ids = _per_channel(op, names)
    return None if ids is None else Layout((1,), ids)


def _group_norm(op) -> Layout | None:
    groups = op.arg(1, "num_groups")
    ids = _per_channel(op, ((2, "weight"), (3, "bias")))
    if ids is None or not isinstance(groups, int):
        return op.unknown() if ids is not None else None
    group_norm_units(op, ids, groups)
    op.patch(Patch(op.node.name, "int", (1,), ids.reshape(groups, -1)[:, 0]))
    return Layout((1,), ids)


def _layer_norm(op) -> Layout | None:
    layout, shape = op.layout(op.arg(0)), op.shape(op.arg(0))
    normalized = op.arg(1, "normalized_shape")
    if layout is None:
        return None
    if not isinstance(normalized, tuple | list):
        return op.unknown()
    first = len(shape) - len(normalized)
    if not any(d >= first for d in layout.dims):
        return op.same(op.arg(0))
    if len(normalized) != 1:
        return op.unknown(f"{op.what()} normalises over several dimensions with channels")
    ids = _per_channel(op, ((2, "weight"), (3, "bias")), dim=len(shape) - 1)
    if ids is None:
        return None
    op.mixed(ids, f"{op.what()} normalises over the channels")
    op.patch(Patch(op.node.name, "int", (1, 0), ids))
    return Layout((len(shape) - 1,), ids)


def _prelu(op) -> Layout | None:
    weight = _tensor(op, 1, "weight")
    if weight is None or prod(op.shape(weight)) == 1:
        return op.same(op.arg(0))
    ids = _per_channel(op, ((1, "weight"),), norm=False)
    return None if ids is None else Layout((1,), ids)


FUNCTIONAL_LAYERS: dict[Callable, Callable[[Any], Any]] = {
    F.conv1d: _conv,
    F.conv2d: _conv,
    F.conv3d: _conv,
    F.linear: _linear,
    F.batch_norm: _batch_norm,
    F.instance_norm: _instance_norm,
    F.group_norm: _group_norm,
    F.layer_norm: _layer_norm,
    F.prelu: _prelu,
    F.pixel_shuffle: lambda op: pixel_shuffle(op, op.arg(1, "upscale_factor")),
    F.pixel_unshuffle: lambda op: pixel_unshuffle(op, op.arg(1, "downscale_factor")),
    F.channel_shuffle: lambda op: channel_shuffle(op, op.arg(1, "groups")),
    torch.channel_shuffle: lambda op: channel_shuffle(op, op.arg(1, "groups")),
}
"""Channel rules of functions that stand for a layer."""


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


def _conv_flops(node: fx.Node) -> int:
    out, weight = _shape(node), _shape(node.args[1] if len(node.args) > 1 else None)
    return prod(out) * prod(weight[1:]) if out and weight else 0


def _linear_flops(node: fx.Node) -> int:
    inp, weight = _shape(node.args[0]), _shape(node.args[1] if len(node.args) > 1 else None)
    return prod(inp[:-1]) * prod(weight) if inp and weight else 0


def _norm_flops(affine_index: int, per: int, extra: int) -> Callable[[fx.Node], int]:
    def count(node: fx.Node) -> int:
        inp = _shape(node.args[0])
        has = len(node.args) > affine_index and node.args[affine_index] is not None
        has = has or node.kwargs.get("weight") is not None
        return prod(inp) * (per + (extra if has else 0)) if inp else 0

    return count


def _batch_norm_flops(node: fx.Node) -> int:
    """F.batch_norm as fvcore counts it: 1 per element (2 with affine) with running
    statistics, 4 (5 with affine) when it computes the batch's own (training=True, as weight
    standardization does)."""
    training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
    per, extra = (4, 1) if training is True else (1, 1)
    return _norm_flops(3, per, extra)(node)


def _input_elements(node: fx.Node) -> int:
    inp = _shape(node.args[0])
    return prod(inp) if inp else 0


def _interpolate_flops(node: fx.Node) -> int:
    mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest")
    out = _shape(node)
    return upsample_flops(mode, out) if out else 0


def _matmul_flops(node: fx.Node) -> int:
    a, b = _shape(node.args[0]), _shape(node.args[1] if len(node.args) > 1 else None)
    out = _shape(node)
    if not (a and b and out):
        return 0
    return prod(out) * a[-1]


FUNCTIONAL_FLOPS: dict[Any, Callable[[fx.Node], int]] = {
    F.conv1d: _conv_flops,
    F.conv2d: _conv_flops,
    F.conv3d: _conv_flops,
    F.linear: _linear_flops,
    F.batch_norm: _batch_norm_flops,
    F.group_norm: _norm_flops(2, 4, 1),
    F.layer_norm: _norm_flops(2, 4, 1),
    F.instance_norm: _norm_flops(3, 4, 1),
    F.adaptive_avg_pool2d: _input_elements,
    F.interpolate: _interpolate_flops,
    torch.matmul: _matmul_flops,
    operator.matmul: _matmul_flops,  # a @ b
    torch.bmm: _matmul_flops,
}
"""MACs of functions that fvcore counts (the convention of prunewise.analysis.counting)."""

METHOD_FLOPS: dict[str, Callable[[fx.Node], int]] = {
    "matmul": _matmul_flops,
    "bmm": _matmul_flops,
}
"""The same for tensor methods (`a.matmul(b)`), keyed by the method's name."""

FUNCTIONAL_FLOPS_BY_NAME: dict[str, Callable[[fx.Node], int]] = {}
"""The same, keyed by "module.qualname" for functions of libraries prunewise does not import
(torchvision's attention functions, say)."""


def functional_flops(target: Any) -> Callable[[fx.Node], int] | None:
    """The MAC counter of a function node's target, or None when it has none."""
    counter = FUNCTIONAL_FLOPS.get(target) if _hashable(target) else None
    if counter is None and callable(target):
        name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"
        counter = FUNCTIONAL_FLOPS_BY_NAME.get(name)
    return counter


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
