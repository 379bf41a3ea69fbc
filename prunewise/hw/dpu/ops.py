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
How each layer type runs is its `dpu` kind in the layer registry (prunewise.layers), and each
function or tensor method its entry in `prunewise.layers.dpu_calls`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunewise.graph.modularize import CONV_ARGS, bake_constants
from prunewise.graph.trace import call_args, node_shape, propagate_shapes, trace
from prunewise.layers import call_kind, layer_spec

__all__ = ["KINDS", "DPUOp", "dpu_ops"]

KINDS: tuple[str, ...] = ("conv", "dwconv", "fc", "pool", "alu", "eltwise", "cpu")


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
        """Workload in GOP: 2 x MACs of a layer with weights (on the DPU or, a grouped
        convolution, on the host); pooling and element-wise ops count one op per input."""
        weighted = self.kind in ("conv", "dwconv", "fc") or self.weight_bytes > 0
        return (2 if weighted else 1) * self.macs / 1e9

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


def _conv(
    name: str, weight: tuple[int, ...], groups: int, bias: bool, inp: tuple, out: tuple
) -> DPUOp:
    """A convolution of weight shape (Cout, Cin / groups, [Kh,] Kw): depthwise when groups =
    Cin = Cout; grouped otherwise on the host (Vitis AI's compiler runs groups = 1 or depthwise
    only: Xilinx/Vitis-AI issue 173)."""
    cin, _, _ = _hw(inp)
    cout, hout, wout = _hw(out)
    k = tuple(weight[2:]) if len(weight) == 4 else (1, weight[-1])
    depthwise = groups > 1 and groups == cin == cout
    kind = "dwconv" if depthwise else ("conv" if groups == 1 else "cpu")
    macs = cout * hout * wout * (cin // groups) * k[0] * k[1]
    weights = prod(weight) + (weight[0] if bias else 0)
    return DPUOp(name, kind, cin, cout, k[0], k[1], hout, wout, macs, weights, prod(inp), prod(out))


def _transposed_conv(name: str, m: nn.ConvTranspose2d, inp: tuple, out: tuple) -> DPUOp:
    """A transposed convolution of weight (Cin, Cout / groups, Kh, Kw): the compiler splits it
    into stride_h x stride_w convolutions of kernel ceil(K / stride) over the input (Vitis AI
    UG1414: transposed-conv2d, kernel / stride in [1, 8]), so it costs its own MACs, Cin x
    Cout / groups x Kh x Kw per input pixel, on the convolution engine (depthwise when groups =
    Cin = Cout; other groups on the host)."""
    cin, hin, win = _hw(inp)
    cout, hout, wout = _hw(out)
    kh, kw = m.kernel_size
    sh, sw = m.stride
    depthwise = m.groups > 1 and m.groups == cin == cout
    kind = "dwconv" if depthwise else ("conv" if m.groups == 1 else "cpu")
    macs = cin * (cout // m.groups) * kh * kw * hin * win
    weights = m.weight.numel() + (cout if m.bias is not None else 0)
    k = (-(-kh // sh), -(-kw // sw))
    return DPUOp(name, kind, cin, cout, *k, hout, wout, macs, weights, prod(inp), prod(out))


def _linear(name: str, weight: tuple[int, ...], bias: bool, inp: tuple, out: tuple) -> DPUOp:
    """A fully connected layer of weight shape (out features, in features)."""
    rows = prod(inp[:-1]) if len(inp) > 1 else 1
    n_out, n_in = weight
    macs = rows * n_in * n_out
    weights = n_out * n_in + (n_out if bias else 0)
    return DPUOp(
        name, "fc", n_in, n_out, 1, 1, 1, rows, macs, weights, prod(inp), prod(out),
    )  # fmt: skip


def _pool(name: str, inp: tuple, out: tuple, kernel: object = None) -> DPUOp:
    """A pooling of the layer's own `kernel` (an int or (Kh, Kw)); without one (adaptive and
    global pooling, a mean), the window the input and output sizes imply."""
    c, h, w = _hw(inp)
    _, ho, wo = _hw(out)
    if isinstance(kernel, int) or (
        isinstance(kernel, tuple | list) and kernel and all(isinstance(k, int) for k in kernel)
    ):
        ks = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        kh, kw = (1, ks[0]) if len(ks) == 1 else (ks[-2], ks[-1])
    else:
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
    if node.op not in ("call_function", "call_method"):
        return "free"
    kind = call_kind(node.op, node.target)
    if kind in ("eltwise", "affine"):
        tensors = [a for a in node.args if isinstance(a, fx.Node) and node_shape(a)]
        if len(tensors) < 2:
            return "fold"  # with a scalar: folds into the scale or bias of the op before
        return "op" if kind == "eltwise" else "cpu"
    if kind in ("conv", "fc"):  # an inlined layer: its weight must have a known shape
        return "op" if node_shape(call_args(node, CONV_ARGS).get("weight")) else "cpu"
    if kind == "pool" and node.target in (torch.mean, "mean"):
        return "op" if _spatial_mean(node) else "cpu"  # a mean over channels is no pooling
    return "op" if kind == "pool" else kind


def _spatial_mean(node: fx.Node) -> bool:
    """Whether x.mean(dims) / torch.mean(x, dims) averages over spatial axes only (axes 2...),
    as a global average pooling does."""
    shape = node_shape(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    dims = call_args(node, ("input", "dim")).get("dim")
    if shape is None or dims is None:
        return False
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if not all(isinstance(d, int) for d in dims):
        return False
    return bool(dims) and all(d % len(shape) >= 2 for d in dims)


def _make(gm: fx.GraphModule, node: fx.Node, out: tuple) -> DPUOp:
    """The op of a node classified 'op'."""
    args = [a for a in node.args if isinstance(a, fx.Node)]
    inp = node_shape(args[0]) if args else None
    inp = inp or out
    name = str(node.target) if node.op == "call_module" else node.name
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        kind = layer_spec(m).dpu
        if kind == "conv" and isinstance(m, nn.ConvTranspose2d):
            return _transposed_conv(name, m, inp, out)
        if kind == "conv":
            return _conv(name, tuple(m.weight.shape), m.groups, m.bias is not None, inp, out)
        if kind == "fc":
            return _linear(name, tuple(m.weight.shape), m.bias is not None, inp, out)
        return _pool(name, inp, out, getattr(m, "kernel_size", None))
    kind = call_kind(node.op, node.target)
    if kind in ("conv", "fc"):
        given = call_args(node, CONV_ARGS)
        weight, bias = node_shape(given["weight"]), given.get("bias") is not None
        if kind == "fc":
            return _linear(name, weight, bias, inp, out)
        groups = given.get("groups", 1)
        return _conv(name, weight, groups if isinstance(groups, int) else 1, bias, inp, out)
    if kind == "pool":  # F.max_pool2d / F.avg_pool2d name their window; adaptive ones do not
        windowed = node.target in (F.max_pool2d, F.avg_pool2d)
        kernel = call_args(node, ("input", "kernel_size")).get("kernel_size") if windowed else None
        return _pool(name, inp, out, kernel)
    return _eltwise(name, [node_shape(a) or out for a in args], out)


def dpu_ops(model: nn.Module, input_shape: tuple[int, ...]) -> list[DPUOp]:
    """The DPU ops of `model` for one input of `input_shape` (C, H, W), in graph order. What
    the graph computes from stored tensors alone (a standardised weight) is computed once, as
    the compiler does, and costs nothing."""
    gm = trace(model, input_shape=tuple(input_shape))
    bake_constants(gm)
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
