"""Parameters and FLOPs of a traced model.

Convention (the one fvcore uses): FLOPs are multiply-accumulates per image at the model's
input size. Convolutions count out_elements * in_channels/groups * kernel_size, linear layers
in_features * out_features per row; BatchNorm in inference counts 1 per element (2 with its
affine scale and shift), adaptive average pooling 1 per input element. Element-wise
operations (activations, additions) are not counted.
"""

from __future__ import annotations

from math import prod

import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from prunewise.graph.trace import node_shape, propagate_shapes, trace

__all__ = ["count_flops", "count_params", "layer_flops"]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def _node_flops(gm: fx.GraphModule, node: fx.Node) -> int:
    out = node_shape(node)
    arg = node.args[0] if node.args else None
    inp = node_shape(arg) if isinstance(arg, fx.Node) else None
    if out is None or inp is None:
        return 0
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, _ConvNd):
            return prod(out) * (m.in_channels // m.groups) * prod(m.kernel_size)
        if isinstance(m, nn.Linear):
            return prod(inp[:-1]) * m.in_features * m.out_features
        if isinstance(m, _BatchNorm):
            return prod(inp) * (2 if m.affine else 1)
        if isinstance(m, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d):
            return prod(inp)
    elif node.op == "call_function" and node.target in (
        F.adaptive_avg_pool1d,
        F.adaptive_avg_pool2d,
        F.adaptive_avg_pool3d,
    ):
        return prod(inp)
    return 0


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """FLOPs (MACs per image) of each counted node, keyed by module name or node name."""
    gm = trace(model)
    propagate_shapes(gm, tuple(input_shape))
    out: dict[str, int] = {}
    for node in gm.graph.nodes:
        f = _node_flops(gm, node)
        if f:
            key = str(node.target) if node.op == "call_module" else node.name
            out[key] = out.get(key, 0) + f
    return out


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total FLOPs (MACs per image) for inputs of shape `input_shape` (C, H, W)."""
    return sum(layer_flops(model, input_shape).values())
