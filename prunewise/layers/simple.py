"""Layers without per-channel parameters: activations, pooling, dropout, padding, upsampling,
flatten, softmax and the channel rearrangements (pixel shuffle, channel shuffle).

Most keep every channel where it is (passthrough). PixelShuffle(r) turns each block of r*r
input channels into one output channel (the block is one unit); PixelUnshuffle the reverse;
ChannelShuffle(g) interleaves g equal chunks (position k of every chunk is one unit, so the
chunks stay equal).
"""

from __future__ import annotations

from math import prod

import numpy as np
from torch import nn

from prunewise.channels.layout import Layout
from prunewise.channels.ops import reshape
from prunewise.layers.registry import LayerSpec, QuantRule, register_layer

__all__ = ["channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "upsample_flops"]


def _passthrough(op, _m: nn.Module) -> Layout | None:
    return op.same(op.arg(0))


def _flatten(op, _m: nn.Module) -> Layout | None:
    return reshape(op, literal_sizes=False)


def _unflatten(op, m: nn.Unflatten) -> Layout | None:
    layout = op.layout(op.arg(0))
    if layout is not None and (m.dim % len(op.shape(op.arg(0)))) in layout.dims:
        return op.unknown(f"{op.what()} splits the channel dimension into fixed sizes")
    return reshape(op, literal_sizes=False)


def _softmax(op, m: nn.Module) -> Layout | None:
    layout = op.layout(op.arg(0))
    dim = -3 if isinstance(m, nn.Softmax2d) else getattr(m, "dim", None)
    if (
        layout is not None
        and isinstance(dim, int)
        and dim % len(op.shape(op.arg(0))) in layout.dims
    ):
        op.mixed(layout.flat(), f"{op.what()} normalises over them")
    return op.same(op.arg(0))


def pixel_shuffle(op, factor: int) -> Layout | None:
    """Each output channel is a block of factor**2 input channels: one unit."""
    ids = op.channels(op.arg(0), 1)
    if ids is None:
        return None
    blocks = ids.reshape(-1, factor * factor)
    return Layout((1,), op.state.channels.tie_along(blocks, (1,)))


def pixel_unshuffle(op, factor: int) -> Layout | None:
    """Each input channel becomes factor**2 output channels."""
    ids = op.channels(op.arg(0), 1)
    return None if ids is None else Layout((1,), np.repeat(ids, factor * factor))


def channel_shuffle(op, groups: int) -> Layout | None:
    """Interleave `groups` chunks; position k of every chunk is one unit."""
    ids = op.channels(op.arg(0), 1)
    if ids is None:
        return None
    chunks = ids.reshape(groups, -1)
    op.state.channels.tie_along(chunks, (0,))
    return op.make((1,), chunks.T.reshape(-1))


def _adaptive_avg_flops(_m: nn.Module, inputs: tuple, _outputs: tuple) -> int:
    """fvcore counts adaptive average pooling as 1 per input element."""
    return prod(inputs[0])


def upsample_flops(mode: str, out: tuple) -> int:
    """fvcore counts 2-D nearest upsampling as 1 per output element, bilinear as 4, and
    nothing else."""
    if len(out) != 4 or mode not in ("nearest", "bilinear"):
        return 0
    return prod(out) * (4 if mode == "bilinear" else 1)


def _upsample_flops(m: nn.Module, _inputs: tuple, outputs: tuple) -> int:
    return upsample_flops(getattr(m, "mode", "nearest"), outputs[0])


_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
_FOLDED = (nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh)
_FLOAT = (
    nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.AvgPool1d,
    nn.AvgPool3d, nn.LPPool1d, nn.LPPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool3d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d,
    nn.ReplicationPad2d,
)  # fmt: skip
_MOVERS = (
    nn.MaxPool1d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool3d, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)  # fmt: skip
_DPU_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

for _cls in _ACTIVATIONS:
    register_layer(_cls, LayerSpec(_passthrough, quant=QuantRule.ACTIVATION, dpu="fold"))
# the DPUCZDX8G's convolution engine applies ReLU, ReLU6 and LeakyReLU; hard-sigmoid runs on
# its ALU engine and hard-swish as hard-sigmoid times the input (Vitis AI target_factory,
# DPUCZDX8G_ISA1_B4096); Vitis AI's quantizer turns sigmoid and SiLU into them (UG1414)
_DPU_ACTIVATIONS = {
    nn.Hardsigmoid: "hsigmoid", nn.Sigmoid: "hsigmoid", nn.Hardswish: "hswish", nn.SiLU: "hswish",
}  # fmt: skip
for _cls in _FOLDED:
    _dpu = _DPU_ACTIVATIONS.get(_cls, "fold")
    register_layer(_cls, LayerSpec(_passthrough, quant=QuantRule.FLOAT, dpu=_dpu))
for _cls in _FLOAT:
    _dpu = _DPU_ACTIVATIONS.get(_cls, "cpu")
    register_layer(_cls, LayerSpec(_passthrough, quant=QuantRule.FLOAT, dpu=_dpu))
for _cls in _MOVERS:
    free = issubclass(_cls, nn.Identity | nn.Dropout | nn.Dropout2d | nn.AlphaDropout)
    register_layer(
        _cls, LayerSpec(_passthrough, quant=QuantRule.PASSTHROUGH, dpu="free" if free else "cpu")
    )
register_layer(nn.MaxPool2d, LayerSpec(_passthrough, quant=QuantRule.PASSTHROUGH, dpu="pool"))
register_layer(
    nn.AdaptiveMaxPool2d, LayerSpec(_passthrough, quant=QuantRule.PASSTHROUGH, dpu="pool")
)
register_layer(nn.AvgPool2d, LayerSpec(_passthrough, quant=QuantRule.FLOAT, dpu="pool"))
register_layer(
    nn.AdaptiveAvgPool2d,
    LayerSpec(_passthrough, flops=_adaptive_avg_flops, quant=QuantRule.FLOAT, dpu="pool"),
)
for _cls in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool3d):  # fvcore counts only the 2-D one
    register_layer(_cls, LayerSpec(_passthrough, quant=QuantRule.FLOAT, dpu="cpu"))
register_layer(
    nn.Upsample, LayerSpec(_passthrough, flops=_upsample_flops, quant=QuantRule.FLOAT, dpu="cpu")
)
register_layer(nn.Flatten, LayerSpec(_flatten, quant=QuantRule.PASSTHROUGH, dpu="free"))
register_layer(nn.Unflatten, LayerSpec(_unflatten, quant=QuantRule.PASSTHROUGH, dpu="free"))
for _cls in (nn.Softmax, nn.Softmax2d):
    register_layer(_cls, LayerSpec(_softmax, quant=QuantRule.PROBABILITY, dpu="host"))
register_layer(nn.LogSoftmax, LayerSpec(_softmax, quant=QuantRule.FLOAT, dpu="host"))
register_layer(
    nn.PixelShuffle,
    LayerSpec(lambda op, m: pixel_shuffle(op, m.upscale_factor), quant=QuantRule.PASSTHROUGH),
)
register_layer(
    nn.PixelUnshuffle,
    LayerSpec(lambda op, m: pixel_unshuffle(op, m.downscale_factor), quant=QuantRule.PASSTHROUGH),
)
register_layer(
    nn.ChannelShuffle,
    LayerSpec(lambda op, m: channel_shuffle(op, m.groups), quant=QuantRule.PASSTHROUGH),
)
