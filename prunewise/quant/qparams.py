"""The arithmetic of INT8 quantization: ranges to scales and zero points, power-of-two rounding.

Pure functions on floats and tensors; the calibration observers and the model rewrite call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "BIAS_CODE_LIMIT",
    "DTYPE_RANGES",
    "QParams",
    "affine_qparams",
    "bias_scale_floor",
    "fake_quantize",
    "pow2_candidates",
    "probability_qparams",
    "quantization_mse",
    "symmetric_qparams",
    "weight_axis",
    "weight_qparams",
]

DTYPE_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
BIAS_CODE_LIMIT = 2**24
"""Largest |int32 bias code| `bias_scale_floor` allows: exact in float32, far from overflow."""
_TINY = 1e-12  # smallest scale; a tensor that is all zeros still gets a valid (tiny) scale


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantization: q = clamp(round(x / scale) + zero_point, qmin, qmax)."""

    scale: float
    zero_point: int
    dtype: str  # "uint8" or "int8"

    @property
    def qmin(self) -> int:
        """Smallest code of the dtype."""
        return DTYPE_RANGES[self.dtype][0]

    @property
    def qmax(self) -> int:
        """Largest code of the dtype."""
        return DTYPE_RANGES[self.dtype][1]

    def to_dict(self) -> dict[str, float | int | str]:
        """JSON-ready form."""
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}


def affine_qparams(lo: float, hi: float, dtype: str) -> QParams:
    """Scale and zero point that map [lo, hi] (widened to hold 0) onto the dtype's codes."""
    qmin, qmax = DTYPE_RANGES[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / (qmax - qmin), _TINY)
    zero_point = int(min(max(round(qmin - lo / scale), qmin), qmax))
    return QParams(scale, zero_point, dtype)


def symmetric_qparams(absmax: float, dtype: str = "int8") -> QParams:
    """Zero point 0 (int8) and a scale that maps [-absmax, absmax] onto [-127, 127]."""
    if dtype != "int8":
        raise ValueError("symmetric quantization uses int8")
    return QParams(max(float(absmax) / 127.0, _TINY), 0, "int8")


def bias_scale_floor(bias: torch.Tensor, input_scale: float) -> torch.Tensor:
    """Smallest weight scale per output channel at which the int32 bias code stays exact.

    A channel's bias is stored as round(b / (input_scale * weight_scale)). When the channel's
    weights are (nearly) zero, for example after folding a BatchNorm with gamma = 0, the weight
    scale |w|max / qmax collapses and the bias code overflows int32 and is clipped: the bias is
    lost. With weight_scale >= |b| / (input_scale * BIAS_CODE_LIMIT) the code stays within
    +-2^24, so the bias survives exactly; the (tiny) weights then round to 0 or near it.
    Shape: bias (C_out,) -> (C_out,).
    """
    margin = 1 + 2**-16  # float32 rounding must not carry a code past the limit
    return bias.detach().abs().float().reshape(-1) * margin / (float(input_scale) * BIAS_CODE_LIMIT)


def weight_axis(layer: nn.Module) -> int:
    """The axis of a layer's weight that holds its output channels: 1 for a transposed
    convolution (in, out / groups, k...), 0 otherwise."""
    return 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0


def weight_qparams(
    weight: torch.Tensor,
    *,
    power_of_two: bool = False,
    qmax: int = 127,
    min_scale: torch.Tensor | None = None,
    axis: int = 0,
) -> torch.Tensor:
    """Per-output-channel symmetric scales (|w| max / qmax), optionally rounded to 2^-k; the
    output channels lie on `axis` (1 for a transposed convolution's (in, out, k...) weight).

    `min_scale` (C_out,) is a floor per channel (see `bias_scale_floor`); with `power_of_two`
    the floor is rounded up to a power of two, so every scale stays one.
    """
    flat = weight.detach().movedim(axis, 0).reshape(weight.shape[axis], -1).float()
    scales = (flat.abs().amax(dim=1) / qmax).clamp_min(_TINY)
    if power_of_two:
        lo = torch.exp2(torch.floor(torch.log2(scales)))
        hi = torch.exp2(torch.ceil(torch.log2(scales)))
        err = [
            (
                (torch.clamp(torch.round(flat / s[:, None]), -qmax, qmax) * s[:, None] - flat) ** 2
            ).mean(1)
            for s in (lo, hi)
        ]
        scales = torch.where(err[0] <= err[1], lo, hi)
    if min_scale is None:
        return scales
    floor = min_scale.to(scales).clamp_min(_TINY)
    if power_of_two:
        floor = torch.exp2(torch.ceil(torch.log2(floor)))
    return torch.maximum(scales, floor)


def probability_qparams(dtype: str, *, power_of_two: bool = False) -> QParams:
    """Quantization of a probability in [0, 1] (a softmax's output), whatever calibration saw:
    scale 1/256 with the lowest code at 0 (uint8 zero point 0, int8 -128), or 2^-7 and zero
    point 0 in int8 with power-of-two scales. ONNX Runtime's QLinearSoftmax (which its graph
    optimiser puts in place of dequantize -> Softmax -> quantize) multiplies by
    floor(1 / scale), so only such scales give what QuantizeLinear would; ONNX Runtime's own
    quantizer fixes the same (onnxruntime.quantization.operators.softmax). Raises ValueError
    for a dtype other than uint8 / int8."""
    if dtype not in DTYPE_RANGES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_RANGES)}, got {dtype!r}")
    if power_of_two:
        return QParams(2.0**-7, 0, "int8")
    return QParams(1.0 / 256, DTYPE_RANGES[dtype][0], dtype)


def pow2_candidates(scale: float) -> tuple[float, float]:
    """The powers of two just below and just above `scale` (equal if it is one)."""
    k = math.log2(max(scale, _TINY))
    return 2.0 ** math.floor(k), 2.0 ** math.ceil(k)


def fake_quantize(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int):
    """Quantize then dequantize `x` (round half to even, as ONNX QuantizeLinear does)."""
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def quantization_mse(
    x: torch.Tensor,
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error of fake-quantizing `x` (optionally a weighted mean, for histograms)."""
    err = (fake_quantize(x, scale, zero_point, qmin, qmax) - x) ** 2
    if weights is None:
        return err.mean()
    return (err * weights).sum() / weights.sum().clamp_min(1e-30)
