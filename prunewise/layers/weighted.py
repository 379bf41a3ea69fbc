"""Layers with weights that consume and produce channels: convolutions (plain, grouped,
depthwise with a channel multiplier, transposed) and linear layers.

Channel rules (prunewise.channels.ops.Op):
- a plain convolution or linear layer consumes its input channels ("in") and produces a new
  space ("out"); a linear layer does so along the last dimension (channels-last too);
- a depthwise convolution (groups = input channels) keeps its input's channels: output k of
  input c is c's channel ("depthwise"; a multiplier m repeats each channel m times);
- a grouped convolution keeps `groups`: its input channels and its outputs are tied across
  the groups position by position, so every group loses the same positions;
- a transposed convolution is the same with the weight's first two dimensions swapped.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import prod

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.conv import _ConvNd

from prunewise.channels.layout import Layout
from prunewise.layers.registry import LayerSpec, QuantRule, register_layer

__all__ = ["computes_as_layer", "conv_channels", "tie_groups", "uses_own_weight"]

_WEIGHTED_CALLS = (
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.linear,
)  # fmt: skip
_FORWARDS = ("forward", "_conv_forward")


def _torch_base(cls: type) -> type | None:
    """The first class of torch.nn in `cls`'s hierarchy (Conv2d for `class C(nn.Conv2d)`)."""
    return next((c for c in cls.__mro__ if c.__module__.startswith("torch.nn")), None)


def _keeps_forward(module: nn.Module) -> bool:
    """Whether the module's type computes with its torch.nn base's own forward."""
    cls, base = type(module), _torch_base(type(module))
    return base is not None and all(
        getattr(cls, f, None) is getattr(base, f, None) for f in _FORWARDS
    )


def _weighted_calls(module: nn.Module) -> tuple[fx.Graph, list[fx.Node]] | None:
    """The module's forward traced alone and its convolution / linear calls (None: untraceable)."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # fx raises many types: an untraceable forward is followed by no rule
        return None
    return graph, [
        n for n in graph.nodes if n.op == "call_function" and n.target in _WEIGHTED_CALLS
    ]


def _reads(node: object, attr: str) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and node.target == attr


def uses_own_weight(module: nn.Module) -> bool:
    """Whether the module's forward passes its stored `weight`, unchanged, to every convolution
    or linear call it makes (and makes one): what a mask on that weight needs. A weight-
    standardised convolution computes another weight from it and does not."""
    if _keeps_forward(module):
        return True
    traced = _weighted_calls(module)
    return traced is not None and _own_weight(traced[1])


def _own_weight(calls: list[fx.Node]) -> bool:
    """Whether there are calls and every one convolves the stored `weight` as it is."""
    return bool(calls) and all(
        _reads(n.kwargs.get("weight", n.args[1] if len(n.args) > 1 else None), "weight")
        for n in calls
    )


def computes_as_layer(module: nn.Module) -> bool:
    """Whether the module computes exactly one convolution or linear call on its stored weight
    and bias and returns it, as its torch.nn base does: then a BatchNorm after it folds into
    those tensors. A subclass whose forward scales, activates or adds to that output does not
    (folding would leave its own computation on the folded output)."""
    if _keeps_forward(module):
        return True
    traced = _weighted_calls(module)  # traced once for both checks
    if traced is None or len(traced[1]) != 1 or not _own_weight(traced[1]):
        return False
    graph, (call,) = traced
    bias = call.kwargs.get("bias", call.args[2] if len(call.args) > 2 else None)
    if not (_reads(bias, "bias") or (bias is None and getattr(module, "bias", None) is None)):
        return False
    output = next(n for n in graph.nodes if n.op == "output")
    return output.args[0] is call


def tie_groups(op, ids: np.ndarray, groups: int) -> None:
    """Tie channel k of every one of `groups` equal chunks of `ids`."""
    if groups > 1 and ids.shape[0] % groups == 0 and ids.shape[0] > groups:
        op.state.channels.tie_along(ids.reshape(groups, -1), (0,))


def conv_channels(op, cin: int, cout: int, groups: int) -> Layout | None:
    """The channel rule of a convolution given its sizes (modules and F.conv*d alike)."""
    x = op.channels(op.arg(0), 1)
    if x is None:
        x = op.fresh(cin, producer=False)
        op.block(x, f"{op.what()} reads channels it cannot follow")
    if groups == 1:
        op.record("in", x)
        out = op.fresh(cout)
        op.record("out", out)
    elif groups == cin and cout % cin == 0:
        out = np.repeat(x, cout // cin)
        op.record("depthwise", out)
    else:
        tie_groups(op, x, groups)
        op.record("in", x)
        out = op.fresh(cout)
        tie_groups(op, out, groups)
        op.record("out", out)
    return Layout((1,), out)


def _conv_rule(op, m: _ConvNd) -> Layout | None:
    return conv_channels(op, m.in_channels, m.out_channels, m.groups)


def _index(t: torch.Tensor, dim: int, keep: np.ndarray) -> torch.Tensor:
    return t.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=t.device))


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))


def _slice_conv(m: _ConvNd, keep: Mapping[str, np.ndarray]) -> None:
    """Resize a copy of a convolution to the kept positions. Weights are out x in/groups x k
    (Conv) or in x out/groups x k (ConvTranspose); a position within a group is p % width."""
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    w = m.weight
    if "depthwise" in keep:
        rows = keep["depthwise"]
        mult = m.out_channels // m.in_channels
        w = _index(w, 0, np.unique(rows // mult) if transposed else rows)
        if m.bias is not None:
            _set(m, "bias", _index(m.bias, 0, rows))
        m.out_channels = len(rows)
        m.in_channels = m.groups = len(rows) // mult
        _set(m, "weight", w)
        return
    if "out" in keep:
        rows = keep["out"]
        width = m.out_channels // m.groups
        w = _index(w, 1, np.unique(rows % width)) if transposed else _index(w, 0, rows)
        if m.bias is not None:
            _set(m, "bias", _index(m.bias, 0, rows))
        m.out_channels = len(rows)
    if "in" in keep:
        cols = keep["in"]
        width = m.in_channels // m.groups
        w = _index(w, 0, cols) if transposed else _index(w, 1, np.unique(cols % width))
        m.in_channels = len(cols)
    _set(m, "weight", w)


def _zero_rows(m: nn.Module, removed: Mapping[str, np.ndarray]) -> None:
    """Zero the removed channels of a same-size copy: the weights and bias of removed outputs,
    the weights that read removed inputs (whatever reaches them, they then count nothing)."""
    with torch.no_grad():
        _zero_inputs(m, removed.get("in"))
    rows = removed.get("out", removed.get("depthwise"))
    if rows is None or not len(rows):
        return
    with torch.no_grad():
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            width_in = m.in_channels // m.groups
            width_out = m.out_channels // m.groups
            for r in rows:
                group = int(r) // width_out
                m.weight[group * width_in : (group + 1) * width_in, int(r) % width_out] = 0
        else:
            m.weight[torch.as_tensor(rows, dtype=torch.long, device=m.weight.device)] = 0
        if m.bias is not None:
            m.bias[torch.as_tensor(rows, dtype=torch.long, device=m.bias.device)] = 0


def _zero_inputs(m: nn.Module, cols: np.ndarray | None) -> None:
    if cols is None or not len(cols):
        return
    if isinstance(m, nn.Linear):
        m.weight[:, torch.as_tensor(cols, dtype=torch.long)] = 0
        return
    width = m.in_channels // m.groups
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        m.weight[torch.as_tensor(cols, dtype=torch.long)] = 0
        return
    per_out = m.out_channels // m.groups
    for c in cols:
        group = int(c) // width
        m.weight[group * per_out : (group + 1) * per_out, int(c) % width] = 0


def _conv_flops(m: _ConvNd, inputs: tuple, outputs: tuple) -> int:
    """fvcore: conv = out elements x in/groups x kernel; transposed = in elements x out/groups
    x kernel."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return prod(inputs[0]) * (m.out_channels // m.groups) * prod(m.kernel_size)
    return prod(outputs[0]) * (m.in_channels // m.groups) * prod(m.kernel_size)


def _transposed_rule(op, m: nn.modules.conv._ConvTransposeNd) -> Layout | None:
    return conv_channels(op, m.in_channels, m.out_channels, m.groups)


def _linear_rule(op, m: nn.Linear) -> Layout | None:
    shape = op.shape(op.arg(0))
    last = len(shape) - 1
    x = op.channels(op.arg(0), last)
    if x is None:
        x = op.fresh(m.in_features, producer=False)
        op.block(x, f"{op.what()} reads features it cannot follow")
    op.record("in", x, dim=last)
    out = op.fresh(m.out_features)
    op.record("out", out)
    return Layout((last,), out)


def _slice_linear(m: nn.Linear, keep: Mapping[str, np.ndarray]) -> None:
    w = m.weight
    if "out" in keep:
        w = _index(w, 0, keep["out"])
        if m.bias is not None:
            _set(m, "bias", _index(m.bias, 0, keep["out"]))
        m.out_features = len(keep["out"])
    if "in" in keep:
        w = _index(w, 1, keep["in"])
        m.in_features = len(keep["in"])
    _set(m, "weight", w)


def _linear_flops(m: nn.Linear, inputs: tuple, _outputs: tuple) -> int:
    return prod(inputs[0][:-1]) * m.in_features * m.out_features


for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layer(
        _cls,
        LayerSpec(
            channels=_conv_rule,
            slice=_slice_conv,
            zero=_zero_rows,
            flops=_conv_flops,
            quant=QuantRule.WEIGHTED,
            dpu="conv" if _cls is not nn.Conv3d else "cpu",
            maskable=_cls is not nn.Conv3d,
        ),
    )
for _cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layer(
        _cls,
        LayerSpec(
            channels=_transposed_rule,
            slice=_slice_conv,
            zero=_zero_rows,
            flops=_conv_flops,
            quant=QuantRule.WEIGHTED,  # weight (in, out / groups, k...): its outputs on axis 1
            dpu="conv" if _cls is nn.ConvTranspose2d else "cpu",
        ),
    )
register_layer(
    nn.Linear,
    LayerSpec(
        channels=_linear_rule,
        slice=_slice_linear,
        zero=_zero_rows,
        flops=_linear_flops,
        quant=QuantRule.WEIGHTED,
        dpu="fc",
        maskable=True,
    ),
)
