"""The operations a DPU runs for a model, found from its torch.fx graph (batch 1, INT8).

A convolution or linear layer with its BatchNorm folded and its activation fused (ReLU,
ReLU6, LeakyReLU: those the convolution engine applies) is one subgraph ("conv", "dwconv",
"fc"); pooling (and a mean over the image) is a "pool" op and an addition or multiplication of
two tensors an "eltwise" op, as the DPU's ALU and element-wise engines run them. Hard-sigmoid
is an "alu" op (the ALU engine) and hard-swish an "alu" op and an "eltwise" multiplication by
its input (Vitis AI target_factory, DPUCZDX8G_ISA1_B4096: neither is a convolution-engine
activation); sigmoid and SiLU count as them, since Vitis AI's quantizer replaces them so
(UG1414, vai_q_tensorflow2 supported layers).
Concatenation, flatten, reshape, dropout and identity cost nothing (the compiler lays the
tensors out in memory). Softmax at the end runs on the host (part of its per-frame time).
Anything else the DPU cannot run (grouped convolutions that are not depthwise, 3-D layers,
GELU, tanh, ...) becomes a "cpu" op: the DPU model charges it host time and names it.
How each layer type runs is its `dpu` kind in the layer registry (prunewise.layers).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from math import prod

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import stochastic_depth

from prunewise.graph.trace import node_shape, propagate_shapes, trace
from prunewise.layers import layer_spec

__all__ = ["KINDS", "DPUOp", "dpu_ops"]

KINDS: tuple[str, ...] = ("conv", "dwconv", "fc", "pool", "alu", "eltwise", "cpu")

_ACT_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu}
_HSIGMOID_FUNCTIONS = {F.hardsigmoid, torch.sigmoid, F.sigmoid}
_HSWISH_FUNCTIONS = {F.hardswish, F.silu}
_POOL_FUNCTIONS = {
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    torch.mean,  # x.mean((2, 3)): a global average pooling
}
_ELTWISE = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul}
_ELTWISE_METHODS = {"add", "add_", "mul", "mul_"}
# identities at inference: dropout and torchvision's stochastic depth (its EfficientNets, ...)
_FREE_FUNCTIONS = {
    torch.flatten, torch.cat, torch.reshape, operator.getitem, getattr, F.dropout,
    stochastic_depth,
}  # fmt: skip
_FREE_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "squeeze", "unsqueeze"}
_HOST_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax}


@dataclass(frozen=True)
class DPUOp:
    """One operation with the sizes the DPU model needs (channels, kernel, maps, bytes)."""

    name: str
    kind: str
    cin: int
    cout: int
    kh: int
    kw: int
    hout: int
    wout: int
    macs: int
    weight_bytes: int
    in_bytes: int
    out_bytes: int
    fused: tuple[str, ...] = ()

    @property
    def gop(self) -> float:
        """Workload in GOP (2 x MACs; pooling and element-wise ops count one op per input)."""
        return 2 * self.macs / 1e9 if self.kind in ("conv", "dwconv", "fc") else self.macs / 1e9

    def with_fused(self, name: str) -> DPUOp:
        """The same op with one more fused layer (BN or activation) named."""
        return DPUOp(**{**self.__dict__, "fused": (*self.fused, name)})


def _hw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an activation shape (N, C, H, W), (N, C, L) or (N, F)."""
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    if len(shape) == 3:
        return shape[1], 1, shape[2]
    return (shape[-1], 1, prod(shape[1:-1]) or 1) if len(shape) >= 2 else (shape[0], 1, 1)


def _conv(name: str, m: nn.Conv1d | nn.Conv2d, inp: tuple, out: tuple) -> DPUOp:
    cin, _, _ = _hw(inp)
    cout, hout, wout = _hw(out)
    k = tuple(m.kernel_size) if len(m.kernel_size) == 2 else (1, m.kernel_size[0])
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    kind = "dwconv" if depthwise else ("conv" if m.groups == 1 else "cpu")
    macs = cout * hout * wout * (cin // m.groups) * k[0] * k[1]
    weights = m.weight.numel() + (m.out_channels if m.bias is not None else 0)
    return DPUOp(name, kind, cin, cout, k[0], k[1], hout, wout, macs, weights, prod(inp), prod(out))


def _linear(name: str, m: nn.Linear, inp: tuple, out: tuple) -> DPUOp:
    rows = prod(inp[:-1]) if len(inp) > 1 else 1
    macs = rows * m.in_features * m.out_features
    weights = m.weight.numel() + (m.out_features if m.bias is not None else 0)
    return DPUOp(
        name, "fc", m.in_features, m.out_features, 1, 1, 1, rows, macs, weights,
        prod(inp), prod(out),
    )  # fmt: skip


def _pool(name: str, inp: tuple, out: tuple) -> DPUOp:
    c, h, w = _hw(inp)
    _, ho, wo = _hw(out)
    kh, kw = max(1, -(-h // ho)), max(1, -(-w // wo))
    return DPUOp(name, "pool", c, c, kh, kw, ho, wo, prod(inp), 0, prod(inp), prod(out))


def _eltwise(name: str, shapes: list[tuple], out: tuple) -> DPUOp:
    c, h, w = _hw(out)
    inputs = sum(prod(s) for s in shapes)
    return DPUOp(name, "eltwise", c, c, 1, 1, h, w, prod(out), 0, inputs, prod(out))


def _alu(name: str, out: tuple) -> DPUOp:
    """An element-wise activation on the ALU engine (hard-sigmoid)."""
    c, h, w = _hw(out)
    return DPUOp(name, "alu", c, c, 1, 1, h, w, prod(out), 0, prod(out), prod(out))


def _cpu(name: str, inp: tuple | None, out: tuple) -> DPUOp:
    c, h, w = _hw(out)
    size = prod(inp) if inp else prod(out)
    return DPUOp(name, "cpu", c, c, 1, 1, h, w, prod(out), 0, size, prod(out))


def _classify(gm: fx.GraphModule, node: fx.Node) -> str:
    """'op', 'fold' (BN / activation into the previous op), 'hsigmoid', 'hswish', 'free',
    'host' or 'cpu'."""
    if node.op == "call_module":
        spec = layer_spec(gm.get_submodule(str(node.target)))
        kind = spec.dpu if spec is not None else "cpu"
        return "op" if kind in ("conv", "fc", "pool") else kind
    if node.op == "call_function":
        if node.target in _ACT_FUNCTIONS:
            return "fold"
        if node.target in _HSIGMOID_FUNCTIONS:
            return "hsigmoid"
        if node.target in _HSWISH_FUNCTIONS:
            return "hswish"
        if node.target in _POOL_FUNCTIONS:
            return "op"
        if node.target in _ELTWISE:
            tensors = [a for a in node.args if isinstance(a, fx.Node) and node_shape(a)]
            return "op" if len(tensors) == 2 else "fold"  # x * scalar folds into the scale
        if node.target in _FREE_FUNCTIONS:
            return "free"
        return "host" if node.target in _HOST_FUNCTIONS else "cpu"
    if node.op == "call_method":
        if node.target in _FREE_METHODS:
            return "free"
        if node.target in _ELTWISE_METHODS or node.target == "mean":
            return "op"
        if node.target in ("sigmoid", "sigmoid_"):
            return "hsigmoid"
        return "host" if node.target in ("softmax", "log_softmax") else "cpu"
    return "free"


def _make(gm: fx.GraphModule, node: fx.Node, out: tuple) -> DPUOp:
    """The op of a node classified 'op'."""
    args = [a for a in node.args if isinstance(a, fx.Node)]
    inp = node_shape(args[0]) if args else None
    inp = inp or out
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        kind = layer_spec(m).dpu
        if kind == "conv":
            return _conv(str(node.target), m, inp, out)
        if kind == "fc":
            return _linear(str(node.target), m, inp, out)
        return _pool(str(node.target), inp, out)
    if node.target in _POOL_FUNCTIONS or node.target == "mean":
        return _pool(node.name, inp, out)
    return _eltwise(node.name, [node_shape(a) or out for a in args], out)


def dpu_ops(model: nn.Module, input_shape: tuple[int, ...]) -> list[DPUOp]:
    """The DPU ops of `model` for one input of `input_shape` (C, H, W), in graph order."""
    gm = trace(model, input_shape=tuple(input_shape))
    propagate_shapes(gm, tuple(input_shape))
    ops: list[DPUOp] = []
    producer: dict[fx.Node, int] = {}  # node -> index of the op whose output it is
    for node in gm.graph.nodes:
        out = node_shape(node)
        if node.op in ("placeholder", "output", "get_attr") or out is None:
            continue
        kind = _classify(gm, node)
        args = [a for a in node.args if isinstance(a, fx.Node)]
        src = producer.get(args[0]) if args else None
        name = str(node.target) if node.op == "call_module" else node.name
        if kind == "fold" and src is not None:
            ops[src] = ops[src].with_fused(name)
            producer[node] = src
        elif kind == "free" or kind == "host" or (kind == "fold" and src is None):
            if src is not None:
                producer[node] = src
        elif kind == "op":
            ops.append(_make(gm, node, out))
            producer[node] = len(ops) - 1
        elif kind in ("hsigmoid", "hswish"):  # hard-swish: hard-sigmoid, then x * it
            ops.append(_alu(name, out))
            if kind == "hswish":
                ops.append(_eltwise(f"{name}.mul", [out, out], out))
            producer[node] = len(ops) - 1
        else:
            inp = node_shape(args[0]) if args else None
            ops.append(_cpu(name, inp, out))
            producer[node] = len(ops) - 1
    return ops
