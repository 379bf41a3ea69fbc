"""Channel rules of functions and tensor methods (what each does to every dimension).

`function_rule(target, method=...)` finds the rule of a call_function target or a call_method
name; `register_function_rule` adds one. Layer types (modules) have their rules in
`prunewise.layers`. An operation with no rule blocks the channels it touches.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from prunewise.channels.layout import Layout
from prunewise.channels.ops import (
    Op,
    Patch,
    concat,
    elementwise,
    reshape,
    residual_sum,
    size_args,
    split,
)
from prunewise.channels.sizes import check_count, count_of, shape_dims, size_channels
from prunewise.graph.shape_trace import traced_size
from prunewise.layers.functional import FUNCTIONAL_LAYERS

__all__ = ["FunctionRule", "function_rule", "register_function_rule"]

FunctionRule = Callable[[Op], Any]


def passthrough(op: Op) -> Layout | None:
    """Same channels out as in (activations, pooling, dropout, interpolation, casts)."""
    return op.same(op.arg(0))


def stack(op: Op) -> Layout | None:
    """torch.stack: the inputs carry the same channels at the same places (tied, as in an
    addition; BiFPN stacks its inputs to weigh them), behind a new dimension. Inputs of other
    layouts, or some without tracked channels, block them."""
    tensors, dim, out = op.arg(0, "tensors"), op.arg(1, "dim", 0), op.out_shape
    if not isinstance(tensors, tuple | list) or not isinstance(dim, int) or out is None:
        return op.unknown()
    layouts = [op.layout(t) for t in tensors]
    if all(lay is None for lay in layouts):
        return None
    first = layouts[0]
    same = all(
        lay is not None and lay.dims == first.dims and lay.ids.shape == first.ids.shape
        for lay in layouts
    )
    if first is None or not same:
        return op.unknown(f"{op.what()} stacks tensors of other channels")
    for lay in layouts[1:]:
        op.tie(first.ids, lay.ids)  # type: ignore[union-attr]
    dim %= len(out)
    return op.make(tuple(d + (d >= dim) for d in first.dims), first.ids)


def unbind(op: Op) -> list[Layout | None] | None:
    """torch.unbind: along a dimension without channels every part carries them all (the
    dimensions after it move up by one); along a channel dimension the channels are taken
    apart one by one, which blocks them."""
    value, dim = op.arg(0), op.arg(1, "dim", 0)
    layout, shape = op.layout(value), op.shape(value)
    if layout is None:
        return None
    metas = op.node.meta.get("tensor_meta")
    several = isinstance(metas, tuple | list) and not hasattr(metas, "shape")
    if shape is None or not isinstance(dim, int) or not several:
        return op.unknown()
    dim %= len(shape)
    if dim in layout.dims:
        return op.unknown(f"{op.what()} takes the channels apart one by one")
    moved = Layout(tuple(d - (d > dim) for d in layout.dims), layout.ids)
    return [moved for _ in metas]


def pad(op: Op) -> Layout | None:
    """F.pad: padding other dimensions keeps the channels; padding a dimension that carries
    them (or by a pad whose length is unknown) blocks them."""
    widths, x = op.arg(1, "pad"), op.arg(0)
    layout, shape = op.layout(x), op.shape(x)
    if layout is None or shape is None:
        return None
    if not isinstance(widths, tuple | list):
        return op.unknown(f"{op.what()} pads by a size it computes")
    padded = {
        len(shape) - 1 - k
        for k in range(len(widths) // 2)
        if widths[2 * k : 2 * k + 2] != [0, 0] and tuple(widths[2 * k : 2 * k + 2]) != (0, 0)
    }
    if padded & set(layout.dims):
        return op.unknown(f"{op.what()} pads the dimension of the channels")
    return op.same(x)


def metadata(_op: Op) -> None:
    """Reads sizes, not values (dim(), numel())."""
    return None


def read_attribute(op: Op) -> None:
    """getattr(x, name): `x.shape` is recorded as the shape of x (prunewise.channels.sizes)."""
    if op.arg(1) == "shape":
        shape_dims(op.state, op.node, op.arg(0))


def read_size(op: Op) -> None:
    """x.size() is x's shape; x.size(d) counts the channels of dimension d, if it has any."""
    dim = op.arg(1, "dim")
    if dim is None:
        shape_dims(op.state, op.node, op.arg(0))
    else:
        size_channels(op, op.arg(0), dim)


def _dims_arg(op: Op, index: int, key: str, ndim: int) -> tuple[int, ...] | None:
    dims = op.arg(index, key)
    if dims is None:
        return tuple(range(ndim))
    if isinstance(dims, int):
        return (dims % ndim,)
    if isinstance(dims, tuple | list) and all(isinstance(d, int) for d in dims):
        return tuple(d % ndim for d in dims)
    return None


def reduce(op: Op) -> Any:
    """mean / sum / amax / std ... over some dimensions. Over the channel dimension the result
    is a statistic of all channels: they stay prunable, but pruning changes it (mixed)."""
    value = op.arg(0)
    layout, shape = op.layout(value), op.shape(value)
    if layout is None:
        return None
    dims = _dims_arg(op, 1, "dim", len(shape))
    keep = bool(op.arg(2, "keepdim", False))
    if dims is None:
        return op.unknown()
    if any(d in dims for d in layout.dims):
        op.mixed(layout.flat(), f"{op.what()} reduces over the channels")
        return None
    new = [d if keep else d - sum(r < d for r in dims) for d in layout.dims]
    result = Layout(tuple(new), layout.ids)
    kind = op.node.meta.get("type")
    if isinstance(kind, type) and issubclass(kind, tuple):
        return [result, result]  # torch.max(x, dim): values and indices
    return result


def softmax(op: Op) -> Layout | None:
    """softmax over the channel dimension mixes the channels; over another, passes them."""
    value, layout = op.arg(0), op.layout(op.arg(0))
    dim = op.arg(1, "dim")
    if layout is not None and isinstance(dim, int) and dim % len(op.shape(value)) in layout.dims:
        op.mixed(layout.flat(), f"{op.what()} normalises over the channels")
    return op.same(value)


def _moved(op: Op, order: list[int]) -> Layout | None:
    """The layout after the tensor's dimensions are rearranged: new dim k = old order[k]."""
    layout = op.layout(op.arg(0))
    if layout is None:
        return None
    new = [order.index(d) for d in layout.dims]
    return op.make(new, layout.ids)


def permute(op: Op) -> Layout | None:
    """permute(dims): the channel dimension moves with it."""
    ndim = len(op.shape(op.arg(0)))
    args = op.node.args[1:]
    order = list(args[0]) if len(args) == 1 and isinstance(args[0], tuple | list) else list(args)
    if not order:
        order = list(op.node.kwargs.get("dims", ()))
    if len(order) != ndim or not all(isinstance(d, int) for d in order):
        return op.unknown()
    return _moved(op, [d % ndim for d in order])


def transpose(op: Op) -> Layout | None:
    """transpose / swapaxes / swapdims(a, b)."""
    ndim = len(op.shape(op.arg(0)))
    a, b = op.arg(1, "dim0"), op.arg(2, "dim1")
    if not (isinstance(a, int) and isinstance(b, int)):
        return op.unknown()
    order = list(range(ndim))
    order[a % ndim], order[b % ndim] = order[b % ndim], order[a % ndim]
    return _moved(op, order)


def movedim(op: Op) -> Layout | None:
    """movedim / moveaxis(source, destination)."""
    ndim = len(op.shape(op.arg(0)))
    src, dst = op.arg(1, "source"), op.arg(2, "destination")
    src = [src] if isinstance(src, int) else list(src or ())
    dst = [dst] if isinstance(dst, int) else list(dst or ())
    if len(src) != len(dst) or not all(isinstance(d, int) for d in [*src, *dst]):
        return op.unknown()
    order = list(np.moveaxis(np.arange(ndim), [s % ndim for s in src], [d % ndim for d in dst]))
    return _moved(op, [int(d) for d in order])


def same_or_reshape(op: Op) -> Layout | None:
    """squeeze / unsqueeze / flatten / unflatten / expand: a reshape by shapes (dimensions of
    size 1 come and go, expanded ones are not channels)."""
    value = op.arg(0)
    layout, shape, out = op.layout(value), op.shape(value), op.out_shape
    if layout is None:
        return None
    if shape is not None and out is not None and len(shape) == len(out):
        return op.same(value)
    return reshape(op, value, literal_sizes=False)


def expand(op: Op) -> Layout | None:
    """expand / expand_as / broadcast_to: size-1 dimensions grow, leading ones are added."""
    value = op.arg(0)
    layout, shape, out = op.layout(value), op.shape(value), op.out_shape
    if layout is None:
        return None
    shift = len(out) - len(shape)
    if any(shape[d] != out[d + shift] for d in layout.dims):
        return op.unknown()
    sizes = size_args(op)
    for axis, d in enumerate(layout.dims):
        if sizes is not None and d + shift < len(sizes.values):
            line = np.moveaxis(layout.ids, axis, 0).reshape(layout.ids.shape[axis], -1)[:, 0]
            check_count(op, sizes.values[d + shift], line)
    return Layout(tuple(d + shift for d in layout.dims), layout.ids)


def repeat(op: Op) -> Layout | None:
    """repeat(sizes): a channel dimension repeated r times carries each channel r times."""
    value = op.arg(0)
    layout, shape, out = op.layout(value), op.shape(value), op.out_shape
    if layout is None:
        return None
    shift = len(out) - len(shape)
    reps = [out[d + shift] // shape[d] for d in layout.dims]
    return Layout(tuple(d + shift for d in layout.dims), np.tile(layout.ids, reps))


def factory(op: Op) -> Layout | None:
    """torch.zeros / ones / full / empty and x.new_zeros / new_ones / new_full / new_empty: a
    new tensor whose size at a dimension is a channel count read from another tensor
    (z.new_zeros(n, z.shape[1], 1, 1)) carries those channels, so it follows their pruning
    (the count is read again when the pruned model runs). Sizes that count no channel make a
    tensor without channels; one sized by a count computed from channels (c // 2) keeps them
    whole (the counts' own rule)."""
    args = list(op.node.args[1:] if op.node.op == "call_method" else op.node.args)
    if op.node.target in ("new_full", torch.full):
        args = args[:1]  # the fill value follows the size
    sizes = args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args
    if not sizes:
        sizes = op.node.kwargs.get("size", ())
    counted = [
        (d, count)
        for d, v in enumerate(sizes)
        if (count := count_of(op.state, v)) is not None and count.exact
    ]
    if len(counted) != 1:
        return None
    d, count = counted[0]
    op.checked.add(sizes[d])
    return Layout((d,), count.ids)


def _computed(item: Any) -> bool:
    """A slice with a bound or step the forward computes (a graph value)."""
    return isinstance(item, slice) and any(
        isinstance(v, fx.Node) for v in (item.start, item.stop, item.step)
    )


def concrete_slice(item: slice, length: int, out_length: int | None) -> slice | None:
    """`item`, a slice of a dimension of `length` whose start or stop the forward computes
    (y[:, : y.shape[1] // 2]), with both bounds as numbers: the computed one follows from the
    other and the sliced length `out_length` the trace recorded. None when both bounds or the
    step are computed, or the length is unknown."""
    start, stop, step = item.start, item.stop, item.step
    if (
        out_length is None
        or step not in (None, 1)
        or isinstance(start, fx.Node) == isinstance(stop, fx.Node)
    ):
        return None
    if isinstance(stop, fx.Node):
        first = slice(start, None).indices(length)[0]
        return slice(first, first + out_length)
    end = slice(None, stop).indices(length)[1]
    return slice(end - out_length, end)


def getitem(op: Op) -> Any:
    """Indexing: a part of a split, or tensor[...] with slices, ints, None and Ellipsis."""
    value, index = op.arg(0), op.arg(1)
    if value in op.state.shape_of:  # x.shape[d] or x.shape[a:b]
        tensor, dims = op.state.shape_of[value]
        if isinstance(index, int) and -len(dims) <= index < len(dims):
            size_channels(op, tensor, dims[index])
        elif isinstance(index, slice):
            op.state.shape_of[op.node] = (tensor, dims[index])
        return None
    found = op.state.layouts.get(value) if isinstance(value, fx.Node) else None
    if isinstance(found, list):
        return (
            found[index] if isinstance(index, int) and -len(found) <= index < len(found) else None
        )
    layout, shape = op.layout(value), op.shape(value)
    if layout is None:
        return None
    if shape is None:
        return op.unknown()
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, fx.Node) or not isinstance(i, int | slice | type(None) | type(...))
           for i in items):  # fmt: skip
        return op.unknown(f"{op.what()} indexes channels with a tensor")
    if ... in items:
        at = items.index(...)
        fill = len(shape) - sum(i is not None for i in items if i is not ...)
        items = [*items[:at], *[slice(None)] * fill, *items[at + 1 :]]
    items += [slice(None)] * (len(shape) - sum(i is not None for i in items))
    ids, dims, out_dim, d = layout.ids, [], 0, 0
    for pos, item in enumerate(items):
        if item is None:
            out_dim += 1
            continue
        if d in layout.dims:
            axis = layout.dims.index(d)
            if isinstance(item, int):
                return op.unknown(f"{op.what()} picks single channels")
            span = None
            if _computed(item):  # y[:, : y.shape[1] // 2]: the bound is known from the sizes
                out = op.shape(op.node)
                item = concrete_slice(item, shape[d], out[out_dim] if out else None)
                if item is None:
                    return op.unknown(f"{op.what()} slices channels at sizes it computes")
                span = (item.start, item.stop)
            start, stop, step = item.indices(shape[d])
            if step != 1:
                return op.unknown(f"{op.what()} takes every {step}th channel")
            if (start, stop) != (0, shape[d]):
                line = np.moveaxis(ids, axis, 0).reshape(ids.shape[axis], -1)[:, 0]
                op.patch(
                    Patch(
                        op.node.name,
                        "slice",
                        (1, pos) if isinstance(index, tuple) else (1,),
                        line,
                        span=span,
                    )
                )
            ids = np.take(ids, np.arange(start, stop), axis=axis)
            dims.append(out_dim)
        if not isinstance(item, int):
            out_dim += 1
        d += 1
    return op.make(dims, ids)


def _stochastic_depth() -> Callable | None:
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # torchvision is optional for the rule table
        return None
    return stochastic_depth


_PASSTHROUGH_FUNCTIONS = (
    F.relu, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.sigmoid, torch.sigmoid, torch.tanh,
    F.tanh, F.softplus, F.softsign, F.logsigmoid, F.hardshrink, F.softshrink, F.tanhshrink,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    torch._C._nn.avg_pool2d, torch._C._nn.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.lp_pool2d, F.interpolate, F.upsample, F.upsample_nearest,
    F.upsample_bilinear, torch.clamp, torch.clip, torch.abs, torch.exp, torch.neg,
    torch.sqrt, torch.rsqrt, torch.square, torch.erf,
)  # fmt: skip
_SUM_FUNCTIONS = (operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub)
_ELEMENTWISE_FUNCTIONS = (
    operator.mul, operator.imul, operator.truediv, operator.itruediv, operator.neg, operator.pow,
    torch.mul, torch.div, torch.true_divide, torch.maximum, torch.minimum, torch.where,
    torch.pow, torch.addcmul, torch.lerp,
)  # fmt: skip
_FUNCTIONS: dict[Any, FunctionRule] = {
    **dict.fromkeys(_PASSTHROUGH_FUNCTIONS, passthrough),
    F.pad: pad,
    **dict.fromkeys(_ELEMENTWISE_FUNCTIONS, elementwise),
    **dict.fromkeys(_SUM_FUNCTIONS, residual_sum),
    **dict.fromkeys((torch.flatten, torch.reshape, torch.unflatten), same_or_reshape),
    **dict.fromkeys((torch.squeeze, torch.unsqueeze), same_or_reshape),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), concat),
    **dict.fromkeys((torch.split, torch.chunk, torch.tensor_split), split),
    torch.stack: stack,
    torch.unbind: unbind,
    **dict.fromkeys(
        (
            torch.mean,
            torch.sum,
            torch.amax,
            torch.amin,
            torch.std,
            torch.var,
            torch.logsumexp,
            torch.max,
            torch.min,
            torch.norm,
        ),
        reduce,
    ),
    **dict.fromkeys((F.softmax, F.log_softmax, torch.softmax, torch.log_softmax), softmax),
    **dict.fromkeys((torch.permute,), permute),
    **dict.fromkeys((torch.transpose, torch.swapaxes, torch.swapdims), transpose),
    **dict.fromkeys((torch.movedim, torch.moveaxis), movedim),
    **dict.fromkeys((torch.broadcast_to,), expand),
    operator.getitem: getitem,
    builtins.getattr: read_attribute,
    traced_size: passthrough,
    **dict.fromkeys((torch.zeros, torch.ones, torch.full, torch.empty), factory),
    **FUNCTIONAL_LAYERS,
}
_sd = _stochastic_depth()
if _sd is not None:
    _FUNCTIONS[_sd] = passthrough
del _sd
for _name in ("floor", "ceil", "sqrt", "log", "exp"):
    _FUNCTIONS[getattr(math, _name)] = metadata

_METHODS: dict[str, FunctionRule] = {
    **dict.fromkeys(
        [
            "relu",
            "relu_",
            "sigmoid",
            "sigmoid_",
            "tanh",
            "tanh_",
            "clamp",
            "clamp_",
            "clip",
            "contiguous",
            "clone",
            "detach",
            "float",
            "double",
            "half",
            "to",
            "type_as",
            "abs",
            "exp",
            "neg",
            "sqrt",
            "rsqrt",
            "square",
            "pow",
            "mul_",
            "div_",
            "add_",
            "sub_",
            "hardswish",
            "softmax_",
            "requires_grad_",
        ],
        passthrough,
    ),
    **dict.fromkeys(
        ["mul", "div", "maximum", "minimum", "addcmul", "where", "__mul__", "__truediv__"],
        elementwise,
    ),
    **dict.fromkeys(["add", "sub", "__add__", "__sub__", "add_", "sub_"], residual_sum),
    **dict.fromkeys(["flatten", "unflatten", "squeeze", "unsqueeze"], same_or_reshape),
    **dict.fromkeys(["view", "reshape"], reshape),
    **dict.fromkeys(
        ["mean", "sum", "amax", "amin", "std", "var", "max", "min", "norm", "logsumexp"], reduce
    ),
    **dict.fromkeys(["softmax", "log_softmax"], softmax),
    **dict.fromkeys(["split", "chunk", "tensor_split"], split),
    **dict.fromkeys(["unbind"], unbind),
    **dict.fromkeys(["permute"], permute),
    **dict.fromkeys(["transpose", "swapaxes", "swapdims"], transpose),
    **dict.fromkeys(["movedim", "moveaxis"], movedim),
    **dict.fromkeys(["expand", "expand_as", "broadcast_to"], expand),
    **dict.fromkeys(["repeat"], repeat),
    **dict.fromkeys(["dim", "numel", "ndimension", "nelement"], metadata),
    "size": read_size,
    **dict.fromkeys(["new_zeros", "new_ones", "new_full", "new_empty"], factory),
}
# in-place element-wise methods: the first argument is updated by the others
for _m in ("mul_", "div_"):
    _METHODS[_m] = elementwise
for _m in ("add_", "sub_"):
    _METHODS[_m] = residual_sum


def register_function_rule(key: Callable | str, rule: FunctionRule) -> None:
    """Declare the channel rule of a function (or, by name, a tensor method)."""
    if not callable(rule):
        raise TypeError(f"a channel rule must be callable, got {rule!r}")
    if isinstance(key, str):
        _METHODS[key] = rule
    elif callable(key):
        _FUNCTIONS[key] = rule
    else:
        raise TypeError(f"cannot register a channel rule for {key!r}")


def function_rule(target: Any, *, method: bool) -> FunctionRule | None:
    """The rule of a call_function target or call_method name, or None if unknown."""
    if method:
        return _METHODS.get(str(target))
    try:
        return _FUNCTIONS.get(target)
    except TypeError:  # an unhashable target
        return None
