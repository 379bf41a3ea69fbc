"""The layer registry: per module type, everything prunewise knows about it (channels,
surgery, FLOPs, quantization, DPU op kind, masks). See `prunewise.layers.registry`."""

from prunewise.layers import attention, norm, simple, weighted
from prunewise.layers.dpu_calls import CALL_KINDS, DPU_FUNCTIONS, DPU_METHODS, call_kind
from prunewise.layers.functional import (
    FUNCTIONAL_FLOPS,
    FUNCTIONAL_FLOPS_BY_NAME,
    FUNCTIONAL_LAYERS,
    METHOD_FLOPS,
    functional_flops,
)
from prunewise.layers.registry import (
    DPU_KINDS,
    LayerSpec,
    QuantRule,
    is_leaf_layer,
    layer_spec,
    register_layer,
    require_spec,
    update_layer,
)

__all__ = [
    "CALL_KINDS",
    "DPU_FUNCTIONS",
    "DPU_KINDS",
    "DPU_METHODS",
    "FUNCTIONAL_FLOPS",
    "FUNCTIONAL_FLOPS_BY_NAME",
    "FUNCTIONAL_LAYERS",
    "METHOD_FLOPS",
    "LayerSpec",
    "QuantRule",
    "attention",
    "call_kind",
    "functional_flops",
    "is_leaf_layer",
    "layer_spec",
    "norm",
    "register_layer",
    "require_spec",
    "simple",
    "update_layer",
    "weighted",
]
