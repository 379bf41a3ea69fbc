"""Parameters and FLOPs of a traced model.

Convention (the one fvcore uses): FLOPs are multiply-accumulates per image at the model's
input size. Convolutions count out_elements * in_channels/groups * kernel_size (transposed:
in_elements * out_channels/groups * kernel_size), linear layers in_features * out_features
per row, matmul out_elements * inner size; BatchNorm in inference counts 1 per element (2 with
its affine scale and shift), group/layer/instance norm 4 (5 with affine), adaptive average
pooling 1 per input element, upsampling 1 per output element (4 bilinear). Element-wise
operations (activations, additions) are not counted. Each layer type's count lives in its
entry of the layer registry (prunewise.layers); functional calls have theirs too.
"""

from __future__ import annotations

from torch import fx, nn

from prunewise.graph.trace import node_shape, propagate_shapes, trace
from prunewise.layers import METHOD_FLOPS, functional_flops, layer_spec

__all__ = ["count_flops", "count_params", "layer_flops", "node_flops"]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def node_flops(modules: dict[str, nn.Module], node: fx.Node) -> int:
    """FLOPs (MACs per image) of one node of a traced graph whose shapes are propagated."""
    outputs = _output_shapes(node)
    if not outputs or outputs[0] is None:
        return 0
    if node.op == "call_module":
        module = modules[str(node.target)]
        spec = layer_spec(module)
        inputs = tuple(s for a in node.args if isinstance(a, fx.Node) and (s := node_shape(a)))
        if spec is None or spec.flops is None or not inputs:
            return 0
        return int(spec.flops(module, inputs, outputs))
    if node.op == "call_function":
        counter = functional_flops(node.target)
        return int(counter(node)) if counter is not None else 0
    if node.op == "call_method" and str(node.target) in METHOD_FLOPS:
        return int(METHOD_FLOPS[str(node.target)](node))
    return 0


def _output_shapes(node: fx.Node) -> tuple[tuple[int, ...] | None, ...]:
    """The shape of each output of a node (one for a tensor; None where not a tensor)."""
    meta = node.meta.get("tensor_meta")
    if hasattr(meta, "shape"):
        return (tuple(int(d) for d in meta.shape),)
    if isinstance(meta, tuple | list):
        return tuple(tuple(int(d) for d in m.shape) if hasattr(m, "shape") else None for m in meta)
    return ()


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """FLOPs (MACs per image) of each counted node, keyed by module name or node name."""
    gm = trace(model, input_shape=tuple(input_shape))
    propagate_shapes(gm, tuple(input_shape))
    modules = dict(gm.named_modules())
    out: dict[str, int] = {}
    for node in gm.graph.nodes:
        f = node_flops(modules, node)
        if f:
            key = str(node.target) if node.op == "call_module" else node.name
            out[key] = out.get(key, 0) + f
    return out


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total FLOPs (MACs per image) for inputs of shape `input_shape` (C, H, W)."""
    return sum(layer_flops(model, input_shape).values())
