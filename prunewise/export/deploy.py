"""The deploy step: float and INT8 ONNX of a model, checked in ONNX Runtime, measured.

`deploy` folds BN, quantizes (calibrated on a few hundred images), writes `model.onnx`,
`model.int8.onnx` and `quant.json`, evaluates the four variants (PyTorch float, PyTorch
fake-quant INT8, ORT float, ORT INT8) on the evaluation data, checks ORT against PyTorch, and
measures ORT latency. Everything lands in one JSON-ready record (`deploy.json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prunewise.errors import PrunewiseError
from prunewise.export.onnx_export import DEFAULT_OPSET, export_float, export_int8
from prunewise.export.runtime import LatencyConfig, latency_grid, ort_logits, ort_session
from prunewise.io import atomic_write_json
from prunewise.quant import Int8Config, quantize

__all__ = ["FLOAT_TOLERANCE", "INT8_AGREEMENT", "DeployConfig", "deploy", "parity_summary"]

FLOAT_TOLERANCE = 1e-4  # max relative error of ORT float logits against PyTorch
INT8_AGREEMENT = 0.99  # fraction of images where ORT INT8 and fake-quant PyTorch agree on top-1


@dataclass(frozen=True)
class DeployConfig:
    """What the deploy step does: INT8 settings, latency grid, and whether to time at all.

    `enabled` is read by `prunewise run`: whether the run ends with the deploy stage.
    """

    enabled: bool = True
    int8: Int8Config = field(default_factory=Int8Config)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    measure_latency: bool = True
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if not isinstance(self.int8, Int8Config):
            raise PrunewiseError(f"int8 must be an Int8Config, got {type(self.int8).__name__}")
        if not isinstance(self.latency, LatencyConfig):
            raise PrunewiseError(
                f"latency must be a LatencyConfig, got {type(self.latency).__name__}"
            )
        if not isinstance(self.enabled, bool):
            raise PrunewiseError(f"deploy.enabled must be true or false, got {self.enabled!r}")
        if not isinstance(self.measure_latency, bool):
            raise PrunewiseError(
                f"measure_latency must be true or false, got {self.measure_latency!r}"
            )
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset < 13:
            raise PrunewiseError(
                f"opset must be an int >= 13 (per-channel INT8 needs it), got {self.opset!r}"
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


def _ort_all(path: Path, loader: DataLoader) -> np.ndarray:
    session = ort_session(path, threads=2)
    return np.concatenate([ort_logits(session, x) for x, _ in loader])


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100.0)


def parity_summary(
    torch_float: np.ndarray, ort_float: np.ndarray, torch_int8: np.ndarray, ort_int8: np.ndarray
) -> dict[str, Any]:
    """ORT against PyTorch: float max relative error, INT8 top-1 agreement, and verdicts."""
    scale = max(float(np.abs(torch_float).max()), 1e-12)
    rel = float(np.abs(ort_float - torch_float).max() / scale)
    agree = float((ort_int8.argmax(1) == torch_int8.argmax(1)).mean())
    return {
        "float_max_rel_error": rel,
        "float_ok": rel <= FLOAT_TOLERANCE,
        "int8_top1_agreement": agree,
        "int8_ok": agree >= INT8_AGREEMENT,
    }


def deploy(
    model: nn.Module,
    calibration: torch.Tensor,
    loader: DataLoader,
    out: str | Path,
    config: DeployConfig | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Quantize, export, check and time `model`; write the files and deploy.json into `out`."""
    config = config or DeployConfig()
    out = Path(out)
    model = model.eval().cpu()
    qmodel = quantize(model, calibration.cpu(), config.int8, progress=progress)
    shape = qmodel.input_shape
    float_path = export_float(model, out / "model.onnx", shape, opset=config.opset)
    int8_path = export_int8(qmodel, out / "model.int8.onnx", opset=config.opset)
    atomic_write_json(out / "quant.json", qmodel.spec.to_dict())
    tf, labels = _torch_logits(model, loader)
    tq, _ = _torch_logits(qmodel.model, loader)
    of, oq = _ort_all(float_path, loader), _ort_all(int8_path, loader)
    record: dict[str, Any] = {
        "input_shape": list(shape),
        "config": config.to_dict(),
        "images": len(labels),
        "bytes": {"float": float_path.stat().st_size, "int8": int8_path.stat().st_size},
        "accuracy": {
            "pytorch_float": _accuracy(tf, labels),
            "pytorch_int8": _accuracy(tq, labels),
            "ort_float": _accuracy(of, labels),
            "ort_int8": _accuracy(oq, labels),
        },
        "parity": parity_summary(tf, of, tq, oq),
        "latency": {},
    }
    if config.measure_latency:
        for name, path in (("float", float_path), ("int8", int8_path)):
            grid = latency_grid(path, shape, config.latency, progress=progress)
            record["latency"][name] = [lat.to_dict() for lat in grid]
    atomic_write_json(out / "deploy.json", record)
    return record
