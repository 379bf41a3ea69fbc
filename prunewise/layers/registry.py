"""The layer registry: everything prunewise knows about a module type, in one entry.

An entry (`LayerSpec`) holds the type's channel rule (what it does to the channels of its
input and output), how surgery slices it, how to zero removed channels (the exactness
reference), its FLOPs, its quantization rule, its DPU operation kind and whether it can carry
fine-grained masks. Entries are looked up through the class hierarchy, so a subclass of a
registered type (`class MyConv(nn.Conv2d)`) is known too; every module whose type has an
entry is a leaf of the trace (its forward is not inlined). `register_layer` adds a type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np
from torch import nn

from prunewise.errors import PrunewiseError

__all__ = [
    "DPU_KINDS",
    "LayerSpec",
    "QuantRule",
    "is_leaf_layer",
    "layer_spec",
    "register_layer",
    "require_spec",
    "update_layer",
]


class QuantRule(Enum):
    """How a layer is quantized."""

    WEIGHTED = "weighted"  # conv / linear: int8 per-channel weights, int32 bias
    ACTIVATION = "activation"  # ReLU-like: fused into the layer before it
    PASSTHROUGH = "passthrough"  # moves values without changing them: keeps the input's scale
    FLOAT = "float"  # computed in float between dequantize and quantize
    # as FLOAT, with the output at the fixed scale 1/256 (2^-7 with power-of-two scales), not a
    # calibrated one: ONNX Runtime's QLinearSoftmax, which replaces dequantize -> Softmax ->
    # quantize, multiplies by floor(1 / scale), exact only there (`probability_qparams`)
    PROBABILITY = "probability"


DPU_KINDS = ("conv", "fc", "pool", "fold", "hsigmoid", "hswish", "free", "host", "cpu")
"""How the DPU model treats a layer: its own subgraph (conv, fc, pool), folded into the one
before (fold: BatchNorm and the activations the convolution engine applies: ReLU, ReLU6,
LeakyReLU), hard-sigmoid on the ALU engine (hsigmoid: also sigmoid, which Vitis AI's quantizer
replaces by it), hard-swish as hard-sigmoid times the input (hswish: also SiLU), free
(reshapes), the host's tail (softmax), or the CPU (anything the DPU cannot run)."""

ChannelRule = Callable[[Any, nn.Module], Any]
Slicer = Callable[[nn.Module, Mapping[str, np.ndarray]], None]
Zeroer = Callable[[nn.Module, Mapping[str, np.ndarray]], None]
FlopCounter = Callable[[nn.Module, tuple, tuple], int]


@dataclass(frozen=True)
class LayerSpec:
    """What prunewise knows about one module type.

    channels: rule(op, module) -> the output's layout (see prunewise.channels.ops.Op);
    slice: fn(copy, keep) resizes a copy of the module in place, keep = role -> positions
        kept (roles: "in", "out", "norm", "depthwise");
    zero: fn(copy, removed) zeroes the removed channels of a same-size copy (role ->
        positions removed); None when zeroing producers upstream suffices;
    flops: fn(module, input shapes (one per tensor argument, in order), output shapes (one
        per output, None for an output that is not a tensor)) -> multiply-accumulates
        (fvcore convention);
    quant: QuantRule; dpu: one of DPU_KINDS; maskable: fine-grained masks may sit on its
        `weight` (prunewise.prune.fine).
    """

    channels: ChannelRule
    slice: Slicer | None = None
    zero: Zeroer | None = None
    flops: FlopCounter | None = None
    quant: QuantRule = QuantRule.FLOAT
    dpu: str = "cpu"
    maskable: bool = False

    def __post_init__(self) -> None:
        if not callable(self.channels):
            raise TypeError(f"LayerSpec.channels must be callable, got {self.channels!r}")
        if self.dpu not in DPU_KINDS:
            raise TypeError(f"LayerSpec.dpu must be one of {DPU_KINDS}, got {self.dpu!r}")
        if not isinstance(self.quant, QuantRule):
            raise TypeError(f"LayerSpec.quant must be a QuantRule, got {self.quant!r}")


_REGISTRY: dict[type, LayerSpec] = {}


def register_layer(cls: type[nn.Module], spec: LayerSpec) -> None:
    """Declare everything prunewise needs to know about module type `cls` (and its subclasses,
    unless they have an entry of their own). Raises TypeError for a non-module type."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_layer needs an nn.Module subclass, got {cls!r}")
    if not isinstance(spec, LayerSpec):
        raise TypeError(f"register_layer needs a LayerSpec, got {spec!r}")
    _REGISTRY[cls] = spec


def update_layer(cls: type[nn.Module], **changes: Any) -> None:
    """Change some fields of the entry that `cls` resolves to, for `cls` (and subclasses)."""
    spec = layer_spec(cls)
    if spec is None:
        raise PrunewiseError(
            f"{cls.__name__} is not a known layer type; register it first with "
            "prunewise.layers.register_layer"
        )
    _REGISTRY[cls] = replace(spec, **changes)


def layer_spec(module: nn.Module | type) -> LayerSpec | None:
    """The entry of a module (or type), found through its class hierarchy; None if unknown."""
    cls = module if isinstance(module, type) else type(module)
    for base in cls.__mro__:
        spec = _REGISTRY.get(base)
        if spec is not None:
            return spec
    return None


def is_leaf_layer(module: nn.Module) -> bool:
    """Whether the tracer keeps `module` whole: its type (or a base class it inherits forward
    from) has an entry. A subclass that overrides forward is inlined, so what its forward
    does is followed operation by operation."""
    cls = type(module)
    for base in cls.__mro__:
        if base in _REGISTRY:
            return base is cls or getattr(cls, "forward", None) is getattr(base, "forward", None)
    return False


def require_spec(module: nn.Module, name: str, what: str) -> LayerSpec:
    """The entry of a module, or an error naming its type and how to register one."""
    spec = layer_spec(module)
    if spec is None:
        cls = type(module)
        raise PrunewiseError(
            f"cannot {what} {name}: prunewise knows no layer type {cls.__module__}."
            f"{cls.__qualname__}; describe it once with prunewise.layers.register_layer"
        )
    return spec
