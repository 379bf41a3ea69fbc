"""INT8 QDQ models written by ONNX Runtime's own static quantizer.

`ort_quantize` hands a float ONNX file and the calibration images to
`onnxruntime.quantization.quantize_static` (after its `quant_pre_process`: shape inference and
graph optimisation, BatchNorm folded into the convolutions): QDQ format, per-channel symmetric
int8 weights, per-tensor asymmetric activations. prunewise's `Int8Config` maps onto it:

- calibration "minmax" and "percentile" (with `percentile`) are ORT's MinMax and Percentile
  calibrators; "mse" exists only in prunewise's quantizer;
- weight_bits 7 is ORT's `reduce_range=True` (7-bit weights), 8 is `reduce_range=False`;
- activation_dtype "uint8" / "int8" is QUInt8 / QInt8;
- power-of-two scales (a DPU's fixed point) exist only in prunewise's quantizer.

`Int8Config.backend` says which quantizer writes the INT8 file: prunewise's by default,
ONNX Runtime's on request (bench/int8_backends.py measured both: bench/README.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from prunewise.errors import PrunewiseError
from prunewise.quant import Int8Config

__all__ = ["ORT_CALIBRATIONS", "ort_quantize"]

ORT_CALIBRATIONS = ("minmax", "percentile")
_BATCH = 16  # calibration images per session.run


def _reader(base: type, name: str, images: np.ndarray) -> object:
    """An ONNX Runtime CalibrationDataReader (`base`) over (N, C, H, W) images, in batches."""
    feeds = iter({name: images[i : i + _BATCH]} for i in range(0, images.shape[0], _BATCH))

    class Reader(base):  # type: ignore[misc, valid-type]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    return Reader()


def ort_quantize(
    float_path: str | Path,
    calibration: torch.Tensor | np.ndarray,
    config: Int8Config,
    path: str | Path,
) -> Path:
    """Write the INT8 QDQ model of the float ONNX file `float_path` to `path` (atomically),
    calibrated by ONNX Runtime on `calibration` (N, C, H, W) images; returns `path`.

    Raises PrunewiseError for a config whose backend is not "onnxruntime" (Int8Config rejects
    settings ONNX Runtime's quantizer lacks) or too few images."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if config.backend != "onnxruntime":
        raise PrunewiseError(
            f"ort_quantize needs an Int8Config whose backend is onnxruntime, got {config.backend!r}"
        )
    images = np.ascontiguousarray(np.asarray(calibration, dtype=np.float32))
    if images.ndim < 2 or images.shape[0] < config.calibration_images:
        raise PrunewiseError(
            f"calibration needs {config.calibration_images} images, got "
            f"{images.shape[0] if images.ndim else 0}"
        )
    images = images[: config.calibration_images]
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ort-quant-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # ONNX's own shape inference only: the exported shapes are static, and ORT's symbolic
        # one fails on some graphs (upsample + concat), leaving sym_shape_infer_temp.onnx and
        # its .data files in the working folder
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        session = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"])
        reader = _reader(CalibrationDataReader, session.get_inputs()[0].name, images)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress
                _quantize(str(pre), str(out), reader, config)
        except ValueError as exc:  # numpy's histogram, on an activation of almost no range
            if config.calibration == "minmax" or "bins" not in str(exc):
                raise
            raise PrunewiseError(
                "ONNX Runtime's percentile calibration cannot bin an activation whose range is "
                f"almost zero ({str(exc).strip()}); calibrate with min/max instead "
                "(--calibration minmax, Int8Config(calibration='minmax')) or use prunewise's "
                "quantizer (--int8-backend prunewise)"
            ) from exc
        os.replace(out, path)
    return path


def _quantize(pre: str, out: str, reader: object, config: Int8Config) -> None:
    """ONNX Runtime's quantize_static with `config`'s settings (QDQ, per-channel weights)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    activation = QuantType.QUInt8 if config.activation_dtype == "uint8" else QuantType.QInt8
    quantize_static(
        pre,
        out,
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=config.bits == 7,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        calibrate_method=(
            CalibrationMethod.MinMax
            if config.calibration == "minmax"
            else CalibrationMethod.Percentile
        ),
        extra_options={"CalibPercentile": config.percentile},
    )
