"""The validated settings of INT8 post-training quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prunewise.errors import PrunewiseError
from prunewise.settings import MAX_SEED, Settings, setting

__all__ = [
    "CALIBRATION_METHODS",
    "INT8_BACKENDS",
    "MIN_CALIBRATION_IMAGES",
    "Int8Config",
    "calibration_shortfall",
]

CALIBRATION_METHODS = ("minmax", "percentile", "mse")
INT8_BACKENDS = ("prunewise", "onnxruntime")
_ORT_CALIBRATIONS = ("minmax", "percentile")
MIN_CALIBRATION_IMAGES = 16


def calibration_shortfall(wanted: int, available: int, more: str) -> str:
    """Why `wanted` calibration images cannot come from the `available` validation images,
    and what to do: ask for fewer, or (below MIN_CALIBRATION_IMAGES) `more`, the way to more
    validation images."""
    if available >= MIN_CALIBRATION_IMAGES:
        return (
            f"{wanted} calibration images are more than the {available} validation images; ask "
            f"for at most {available} (--calibration-images) or {more}"
        )
    return (
        f"the validation split holds {available} images, fewer than the "
        f"{MIN_CALIBRATION_IMAGES} INT8 calibration needs; {more}"
    )


@dataclass(frozen=True)
class Int8Config(Settings):
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
    backend: which quantizer writes the INT8 ONNX file. "prunewise" (default): prunewise's
        own QDQ export of the fake-quantized model, its exact twin in PyTorch; "onnxruntime":
        ONNX Runtime's `quantize_static` on the float ONNX file
        (prunewise.export.ort_quantize), which offers minmax and percentile calibration and 7-
        or 8-bit weights, not power-of-two scales or mse. Either way prunewise's
        fake-quantized PyTorch model, calibrated alike, gives the INT8 accuracy before export
        (bench/int8_backends.py compares the two files: bench/README.md).
    """

    section: ClassVar[str] = "deploy.int8"

    calibration: str = setting(
        "percentile",
        "activation ranges from the calibration images",
        choices=CALIBRATION_METHODS,
        flag="--calibration",
    )
    percentile: float = setting(
        99.99,
        "percentile the ranges are clipped at (--calibration percentile)",
        low=50,
        high=100,
        low_open=True,
        flag="--percentile",
    )
    calibration_images: int = setting(
        256,
        "validation images to calibrate on",
        low=MIN_CALIBRATION_IMAGES,
        high=1_000_000,
        flag="--calibration-images",
        metavar="N",
    )
    power_of_two: bool = setting(
        False,
        "round every scale to 2^-k with symmetric int8 activations, as a DPU requires",
        flag="--power-of-two",
    )
    activation_dtype: str = setting(
        "uint8", "activation codes (asymmetric scales)", choices=("uint8", "int8")
    )
    histogram_bins: int = setting(2048, "histogram bins of calibration", low=16, high=2**20)
    weight_bits: int | None = setting(
        None,
        "weight code bits (unset: 7, or 8 with --power-of-two; 8-bit weights saturate ONNX "
        "Runtime's int8 kernels on x86 CPUs without VNNI)",
        kind="int",
        low=2,
        high=8,
        flag="--weight-bits",
    )
    seed: int = setting(0, "seed of the calibration sample", low=0, high=MAX_SEED)
    backend: str = setting(
        "prunewise",
        "which quantizer writes the INT8 ONNX file: prunewise's (checked against its PyTorch "
        "twin) or onnxruntime's quantize_static (minmax or percentile, 7- or 8-bit weights)",
        choices=INT8_BACKENDS,
        flag="--int8-backend",
    )

    def check(self) -> None:
        """Raises PrunewiseError for the "onnxruntime" backend with settings its quantizer
        lacks."""
        lacks = [
            why
            for why, missing in (
                ("power-of-two scales (--power-of-two)", self.power_of_two),
                (f"{self.calibration} calibration", self.calibration not in _ORT_CALIBRATIONS),
                (f"{self.bits}-bit weights", self.bits not in (7, 8)),
            )
            if missing
        ]
        if self.backend == "onnxruntime" and lacks:
            raise PrunewiseError(
                f"ONNX Runtime's quantizer has no {' and no '.join(lacks)}; drop "
                "--int8-backend onnxruntime (prunewise's quantizer has it) or the option"
            )

    @property
    def bits(self) -> int:
        """The weight code bits: weight_bits, or when it is unset 7 (8 with power-of-two
        scales). Unset stays unset in the config, so that power_of_two given later (a run
        file, the command line) still picks its own default."""
        if self.weight_bits is not None:
            return self.weight_bits
        return 8 if self.power_of_two else 7

    @property
    def weight_qmax(self) -> int:
        """Largest weight code: 127 for 8 bits (codes are symmetric, -qmax..qmax)."""
        return 2 ** (self.bits - 1) - 1

    @property
    def needs_histogram(self) -> bool:
        """Whether calibration makes the second (histogram) pass."""
        return self.calibration != "minmax" or self.power_of_two
