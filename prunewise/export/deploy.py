"""The deploy step: float and INT8 ONNX of a model, checked in ONNX Runtime, measured.

`deploy` folds BN, quantizes (calibrated on a few hundred images), writes `model.onnx` and
`model.int8.onnx` (by ONNX Runtime's quantizer, or by prunewise's with its scales in
`quant.json`: `Int8Config.backend`), evaluates the four variants (PyTorch float, PyTorch
fake-quant INT8, ORT float, ORT INT8) on the evaluation data, checks ORT against PyTorch, and
measures ORT latency. Everything lands in one JSON-ready record (`deploy.json`).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prunewise.errors import PrunewiseError
from prunewise.export.onnx_export import DEFAULT_OPSET, export_float, export_int8
from prunewise.export.ort_quant import ort_quantize
from prunewise.export.runtime import LatencyConfig, latency_grid, ort_logits, ort_session
from prunewise.io import atomic_write_json
from prunewise.quant import Int8Config, QuantizedModel, quantize
from prunewise.records.deploy import (
    FAKE_QUANT_REFERENCE,
    UNFUSED_QDQ_REFERENCE,
    Accuracy,
    DeployRecord,
    LatencyRow,
    Parity,
)
from prunewise.settings import Settings, nested, setting

__all__ = [
    "FLOAT_TOLERANCE",
    "INT8_AGREEMENT",
    "INT8_FLOAT_TOLERANCE",
    "DeployConfig",
    "deploy",
    "parity_problems",
    "parity_summary",
    "write_int8",
]

FLOAT_TOLERANCE = 1e-4  # max relative error of ORT float logits against PyTorch
INT8_AGREEMENT = 0.99  # fraction of images where ORT INT8 and fake-quant PyTorch agree on top-1
INT8_FLOAT_TOLERANCE = 0.1  # relative L2 error of ORT INT8 logits against the float model's


@dataclass(frozen=True)
class DeployConfig(Settings):
    """What the deploy step does: INT8 settings, latency grid, and whether to time at all.

    `enabled` is read by `prunewise run`: whether the run ends with the deploy stage.
    """

    section: ClassVar[str] = "deploy"

    enabled: bool = setting(True, "skip the deploy stage (INT8, ONNX, latency)", flag="--no-deploy")
    int8: Int8Config = nested(Int8Config)
    latency: LatencyConfig = nested(LatencyConfig)
    measure_latency: bool = setting(True, "deploy without timing ONNX Runtime", flag="--no-latency")
    opset: int = setting(
        DEFAULT_OPSET, "ONNX opset (per-channel INT8 needs 13 or later)", low=13, high=30
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _torch_logits(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    model = model.eval().cpu()
    outs, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            outs.append(model(x.float()).numpy())
            labels.append(np.asarray(y))
    return np.concatenate(outs), np.concatenate(labels)


def _ort_all(path: Path, loader: DataLoader, *, optimize: bool = True) -> np.ndarray:
    session = ort_session(path, threads=2, optimize=optimize)
    return np.concatenate([ort_logits(session, x) for x, _ in loader])


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100.0)


def _relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    """||approx - exact|| / ||exact|| over all logits (L2), 0 when both are zero."""
    norm = float(np.linalg.norm(exact))
    diff = float(np.linalg.norm(approx.astype(np.float64) - exact))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))


def parity_summary(
    torch_float: np.ndarray,
    ort_float: np.ndarray,
    torch_int8: np.ndarray,
    ort_int8: np.ndarray,
    int8_reference: str = FAKE_QUANT_REFERENCE,
) -> Parity:
    """The deploy checks, with their verdicts. Arrays are logits (N, classes).

    - float: ORT float against PyTorch float, max relative error <= FLOAT_TOLERANCE;
    - int8: ORT INT8 against its reference `torch_int8` (named by `int8_reference`: the
      fake-quantized PyTorch model, or the INT8 file's QDQ graph run unfused), same top-1 on
      >= INT8_AGREEMENT;
    - int8_vs_float: ORT INT8 against the float model, relative L2 error of the logits
      <= INT8_FLOAT_TOLERANCE. The first two show that ONNX Runtime computes what PyTorch
      computes; only this one sees a quantization that is wrong in both (a lost bias, a
      clipped range), since ORT and the fake-quantized model then agree on the wrong numbers.
    """
    scale = max(float(np.abs(torch_float).max()), 1e-12)
    rel = float(np.abs(ort_float - torch_float).max() / scale)
    agree = float((ort_int8.argmax(1) == torch_int8.argmax(1)).mean())
    int8_error = _relative_error(ort_int8, torch_float)
    return Parity(
        float_max_rel_error=rel,
        int8_top1_agreement=agree,
        float_ok=rel <= FLOAT_TOLERANCE,
        int8_ok=agree >= INT8_AGREEMENT,
        int8_float_rel_error=int8_error,
        int8_float_top1_agreement=float((ort_int8.argmax(1) == torch_float.argmax(1)).mean()),
        int8_float_ok=int8_error <= INT8_FLOAT_TOLERANCE,
        int8_reference=int8_reference,
    )


def parity_problems(parity: Parity) -> list[str]:
    """One sentence per failed deploy check of a `parity_summary` record (empty: all passed)."""
    problems = []
    if not parity.float_ok:
        problems.append(
            f"ONNX Runtime float logits differ from PyTorch by up to "
            f"{parity.float_max_rel_error:.1e} (relative; tolerance {FLOAT_TOLERANCE:g})"
        )
    if not parity.int8_ok:
        problems.append(
            f"ONNX Runtime INT8 gives its reference's ({parity.int8_reference}) top-1 on only "
            f"{100 * parity.int8_top1_agreement:.2f} % of the images (need "
            f"{100 * INT8_AGREEMENT:g} %)"
        )
    if parity.int8_float_ok is False:
        problems.append(
            f"INT8 logits are {100 * (parity.int8_float_rel_error or 0.0):.1f} % (relative L2) "
            f"away from the float model's (tolerance {100 * INT8_FLOAT_TOLERANCE:g} %): the "
            "quantization loses information this model needs; try --calibration mse or "
            "minmax, or more calibration images"
        )
    return problems


def write_int8(
    qmodel: QuantizedModel,
    calibration: torch.Tensor,
    path: str | Path,
    spec_path: str | Path,
    *,
    float_path: str | Path | None = None,
    float_model: nn.Module | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """The INT8 QDQ file at `path`, by the backend of the model's Int8Config: prunewise's
    export of `qmodel` (its scales and zero points then written to `spec_path`), or ONNX
    Runtime's quantizer on the `calibration` images and the float ONNX file `float_path`
    (exported from `float_model` into a temporary folder when not given). Raises
    PrunewiseError when the ONNX Runtime backend has neither."""
    config, path = qmodel.spec.config, Path(path)
    if config.backend != "onnxruntime":
        atomic_write_json(spec_path, qmodel.spec.to_dict())
        return export_int8(qmodel, path, opset=opset)
    if float_path is not None:
        return ort_quantize(float_path, calibration.cpu(), config, path)
    if float_model is None:
        raise PrunewiseError("ONNX Runtime's quantizer needs the float model or its ONNX file")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".float-") as tmp:
        shape = qmodel.input_shape
        fpath = export_float(float_model.eval().cpu(), Path(tmp) / "float.onnx", shape, opset=opset)
        return ort_quantize(fpath, calibration.cpu(), config, path)


def deploy(
    model: nn.Module,
    calibration: torch.Tensor,
    loader: DataLoader,
    out: str | Path,
    config: DeployConfig | None = None,
    *,
    progress: bool = False,
) -> DeployRecord:
    """Quantize, export, check and time `model`; write the files and deploy.json into `out`;
    the record deploy.json holds."""
    config = config or DeployConfig()
    out = Path(out)
    model = model.eval().cpu()
    qmodel = quantize(model, calibration.cpu(), config.int8, progress=progress)
    shape = qmodel.input_shape
    float_path = export_float(model, out / "model.onnx", shape, opset=config.opset)
    int8_path = write_int8(
        qmodel, calibration, out / "model.int8.onnx", out / "quant.json",
        float_path=float_path, opset=config.opset,
    )  # fmt: skip
    tf, labels = _torch_logits(model, loader)
    tq, _ = _torch_logits(qmodel.model, loader)
    of, oq = _ort_all(float_path, loader), _ort_all(int8_path, loader)
    if config.int8.backend == "onnxruntime":  # no PyTorch twin: the file's QDQ graph as written
        reference, tref = UNFUSED_QDQ_REFERENCE, _ort_all(int8_path, loader, optimize=False)
    else:
        reference, tref = FAKE_QUANT_REFERENCE, tq
    latency = {}
    if config.measure_latency:
        for name, path in (("float", float_path), ("int8", int8_path)):
            grid = latency_grid(path, shape, config.latency, progress=progress)
            latency[name] = tuple(LatencyRow.from_dict(lat.to_dict()) for lat in grid)
    record = DeployRecord(
        float_bytes=float_path.stat().st_size,
        int8_bytes=int8_path.stat().st_size,
        accuracy=Accuracy(
            pytorch_float=_accuracy(tf, labels),
            pytorch_int8=_accuracy(tq, labels),
            ort_float=_accuracy(of, labels),
            ort_int8=_accuracy(oq, labels),
        ),
        parity=parity_summary(tf, of, tref, oq, reference),
        latency=latency,
        config=config.to_dict(),
        images=len(labels),
        input_shape=tuple(shape),
    )
    atomic_write_json(out / "deploy.json", record.to_dict())
    return record
