"""The validated settings of INT8 post-training quantization."""

from __future__ import annotations

from dataclasses import dataclass

from prunewise.errors import PrunewiseError

__all__ = ["CALIBRATION_METHODS", "MIN_CALIBRATION_IMAGES", "Int8Config"]

CALIBRATION_METHODS = ("minmax", "percentile", "mse")
MIN_CALIBRATION_IMAGES = 16


@dataclass(frozen=True)
class Int8Config:
    """INT8 post-training quantization: per-channel symmetric weights, per-tensor activations.

    calibration: how activation ranges come from the calibration images: "minmax" (the whole
        observed range), "percentile" (clip at the given percentile), "mse" (the clipping that
        minimises the quantization error over the observed histogram).
    power_of_two: every scale is 2^-k and activations are symmetric int8 (a DPU's fixed-point
        positions); otherwise activations are asymmetric in `activation_dtype`.
    weight_bits: weight codes use -(2^(b-1)-1)..2^(b-1)-1, stored as int8. Default: 7, unless
        power_of_two (then 8). ONNX Runtime's uint8 x int8 kernels on x86 CPUs without VNNI
        add pairs of products in int16 and saturate with 8-bit weights; 7-bit weights (ORT's
        "reduce_range") make every x86 CPU compute exactly what the fake-quantized model does.
        A DPU computes 8-bit weights exactly.
    """

    calibration: str = "percentile"
    percentile: float = 99.99
    calibration_images: int = 256
    power_of_two: bool = False
    activation_dtype: str = "uint8"
    histogram_bins: int = 2048
    weight_bits: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise PrunewiseError(
                f"unknown calibration method {self.calibration!r}; "
                f"use one of {', '.join(CALIBRATION_METHODS)}"
            )
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, int | float):
            raise PrunewiseError(f"percentile must be a number, got {self.percentile!r}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise PrunewiseError(
                f"percentile must be in (50, 100], got {self.percentile}; 99.99 is typical"
            )
        n = self.calibration_images
        if isinstance(n, bool) or not isinstance(n, int) or n < MIN_CALIBRATION_IMAGES:
            raise PrunewiseError(
                f"calibration needs at least {MIN_CALIBRATION_IMAGES} images, got {n!r}; "
                "a few hundred training images (default 256) give stable ranges"
            )
        if not isinstance(self.power_of_two, bool):
            raise PrunewiseError(f"power_of_two must be true or false, got {self.power_of_two!r}")
        if self.activation_dtype not in ("uint8", "int8"):
            raise PrunewiseError(
                f"activation_dtype must be 'uint8' or 'int8', got {self.activation_dtype!r}"
            )
        bins = self.histogram_bins
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16:
            raise PrunewiseError(f"histogram_bins must be an int >= 16, got {bins!r}")
        if self.weight_bits is None:
            object.__setattr__(self, "weight_bits", 8 if self.power_of_two else 7)
        wb = self.weight_bits
        if isinstance(wb, bool) or not isinstance(wb, int) or not 2 <= wb <= 8:
            raise PrunewiseError(
                f"weight_bits must be an int in 2..8, got {wb!r}; 7 avoids the int16 "
                "saturation of uint8 x int8 kernels on CPUs without VNNI"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PrunewiseError(f"seed must be an int, got {self.seed!r}")

    @property
    def weight_qmax(self) -> int:
        """Largest weight code: 127 for 8 bits (codes are symmetric, -qmax..qmax)."""
        return 2 ** (self.weight_bits - 1) - 1

    @property
    def needs_histogram(self) -> bool:
        """Whether calibration makes the second (histogram) pass."""
        return self.calibration != "minmax" or self.power_of_two
