"""How the DPU model (`prunewise.hw.dpu`) treats a traced graph's function calls and tensor
methods: the counterpart, for what is not a module, of `LayerSpec.dpu`.

A function appears where the tracer inlined a module (timm's BatchNormAct2d calls
F.batch_norm, its Conv2dSame F.pad and F.conv2d, a user's layer F.linear) or where a model
calls it directly (F.relu, torch.cat, x.mean). Each maps to one of `CALL_KINDS`: the layer
kinds of `DPU_KINDS`, plus "eltwise" (an addition or product: of two tensors an element-wise
op; with a scalar folded into the scale of the op before) and "affine" (a subtraction or
division: with a scalar folded, of two tensors on the host, which the DPU's element-wise
engine does not run; Vitis AI target_factory DPUCZDX8G_ISA1: eltwise add and mult only).
A call in neither table runs on the host CPU. Add an entry to teach the DPU model a function.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import stochastic_depth

from prunewise.layers.registry import DPU_KINDS

__all__ = ["CALL_KINDS", "DPU_FUNCTIONS", "DPU_METHODS", "call_kind"]

CALL_KINDS: tuple[str, ...] = (*DPU_KINDS, "eltwise", "affine")

DPU_FUNCTIONS: dict[Any, str] = {
    # layers the tracer inlined: their own subgraph, or folded (BatchNorm into the conv before)
    F.conv1d: "conv", F.conv2d: "conv", F.linear: "fc", F.batch_norm: "fold",
    # activations the convolution engine applies
    F.relu: "fold", torch.relu: "fold", F.relu_: "fold", torch.relu_: "fold", F.relu6: "fold",
    F.leaky_relu: "fold",
    # ALU engine (sigmoid and SiLU: Vitis AI's quantizer replaces them by the hard forms)
    F.hardsigmoid: "hsigmoid", torch.sigmoid: "hsigmoid", F.sigmoid: "hsigmoid",
    F.hardswish: "hswish", F.silu: "hswish",
    # pooling, and x.mean((2, 3)) as a global average pooling
    F.max_pool2d: "pool", F.avg_pool2d: "pool", F.adaptive_avg_pool2d: "pool",
    F.adaptive_max_pool2d: "pool", torch.mean: "pool",
    operator.add: "eltwise", operator.iadd: "eltwise", torch.add: "eltwise",
    operator.mul: "eltwise", operator.imul: "eltwise", torch.mul: "eltwise",
    operator.sub: "affine", torch.sub: "affine", operator.truediv: "affine",
    torch.div: "affine",
    # laid out in memory by the compiler; zero padding becomes the next conv's; identities at
    # inference (dropout, torchvision's stochastic depth)
    torch.flatten: "free", torch.cat: "free", torch.reshape: "free", torch.split: "free",
    torch.chunk: "free", operator.getitem: "free", getattr: "free", F.pad: "free",
    F.dropout: "free", stochastic_depth: "free",
    # the host's tail
    F.softmax: "host", F.log_softmax: "host", torch.softmax: "host",
}  # fmt: skip
"""DPU kind of a function call (one of CALL_KINDS)."""

DPU_METHODS: dict[str, str] = {
    "view": "free", "reshape": "free", "flatten": "free", "size": "free", "contiguous": "free",
    "squeeze": "free", "unsqueeze": "free", "split": "free", "chunk": "free",
    "expand_as": "free",
    "add": "eltwise", "add_": "eltwise", "mul": "eltwise", "mul_": "eltwise",
    "sub": "affine", "div": "affine",
    "relu": "fold", "relu_": "fold",
    "sigmoid": "hsigmoid", "sigmoid_": "hsigmoid",
    "mean": "pool",
    "softmax": "host", "log_softmax": "host",
}  # fmt: skip
"""DPU kind of a tensor method call (x.mean(...), x.sigmoid(), ...), by name."""


def call_kind(op: str, target: Any) -> str:
    """The DPU kind of an fx node that calls a function (`op` "call_function") or a tensor
    method ("call_method"); "cpu" for one in neither table."""
    if op == "call_method":
        return DPU_METHODS.get(str(target), "cpu")
    try:
        return DPU_FUNCTIONS.get(target, "cpu")
    except TypeError:  # an unhashable target
        return "cpu"
