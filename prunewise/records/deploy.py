"""The deploy record (deploy.json, docs/deploy.md): sizes, accuracy in PyTorch and ONNX
Runtime, the parity checks and the latency grid of one deployed model, typed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from prunewise.records.schema import DEPLOY, require_shape

__all__ = [
    "FAKE_QUANT_REFERENCE",
    "MIOU",
    "TOP1",
    "UNFUSED_QDQ_REFERENCE",
    "Accuracy",
    "DeployRecord",
    "LatencyRow",
    "Parity",
]

FAKE_QUANT_REFERENCE = "pytorch fake-quant"  # prunewise's fake-quantized model, the file's twin
UNFUSED_QDQ_REFERENCE = "qdq graph, unfused"  # the INT8 file run as written (ORT_DISABLE_ALL)
TOP1 = "top-1"
"""The metric of a classifier's deploy record: top-1 accuracy (%) over images."""
MIOU = "mIoU"
"""The metric of a segmentation model's deploy record: mean IoU (%) over pixels."""


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy (%) on the test images of the float and the INT8 model (mean IoU, %, for
    a segmentation model: `DeployRecord.metric`), computed by PyTorch (the INT8 one
    fake-quantized) and by ONNX Runtime; None where not measured."""

    pytorch_float: float | None = None
    pytorch_int8: float | None = None
    ort_float: float | None = None
    ort_int8: float | None = None

    @property
    def int8_cost(self) -> float | None:
        """Points of accuracy INT8 costs in ONNX Runtime (float - INT8)."""
        if self.ort_float is None or self.ort_int8 is None:
            return None
        return self.ort_float - self.ort_int8


@dataclass(frozen=True)
class Parity:
    """The deploy checks (`prunewise.export.parity_summary`): ORT float against PyTorch float
    (max relative error), ORT INT8 against its reference (top-1 agreement) and against the
    float model (relative L2 of the logits), each with its verdict. The INT8 reference
    (`int8_reference`) is prunewise's fake-quantized PyTorch model when prunewise's quantizer
    wrote the file, the file's own QDQ graph run unfused when ONNX Runtime's did."""

    float_max_rel_error: float
    int8_top1_agreement: float
    float_ok: bool
    int8_ok: bool
    int8_float_rel_error: float | None = None
    int8_float_top1_agreement: float | None = None
    int8_float_ok: bool | None = None
    int8_reference: str = FAKE_QUANT_REFERENCE  # or UNFUSED_QDQ_REFERENCE

    @property
    def ok(self) -> bool:
        """Every check that was made passed."""
        return self.float_ok and self.int8_ok and self.int8_float_ok is not False

    def to_dict(self) -> dict[str, Any]:
        """The "parity" object of deploy.json (with "ok")."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**{k: v for k, v in out.items() if v is not None}, "ok": self.ok}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Parity:
        """Read the "parity" object (its "ok" is recomputed)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class LatencyRow:
    """Median ONNX Runtime latency (ms per run) and images/s at one thread count and batch;
    `extra` keeps the percentiles and run count."""

    threads: int
    batch: int
    median_ms: float
    fps: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyRow:
        """Read one entry of deploy.json's latency lists (`Latency.to_dict`)."""
        keys = ("threads", "batch", "median_ms", "fps")
        rest = {k: v for k, v in data.items() if k not in keys}
        return cls(*(data[k] for k in keys), extra=rest)

    def to_dict(self) -> dict[str, Any]:
        """The entry as `Latency.to_dict` writes it."""
        fixed = {"threads": self.threads, "batch": self.batch, "median_ms": self.median_ms}
        return {**fixed, **self.extra, "fps": self.fps}


@dataclass(frozen=True)
class DeployRecord:
    """deploy.json: ONNX file bytes (float, INT8), accuracy, checks, the latency grid by
    precision ("float", "int8"), the deploy settings, the number of test images, the input
    shape (C, H, W) and the metric `accuracy` holds."""

    float_bytes: int
    int8_bytes: int
    accuracy: Accuracy
    parity: Parity
    latency: Mapping[str, tuple[LatencyRow, ...]] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    images: int | None = None
    input_shape: tuple[int, ...] | None = None
    metric: str = TOP1  # what `accuracy` holds: TOP1 (%, images) or MIOU (%, pixels)

    @property
    def score_label(self) -> str:
        """How tables name the metric: "acc" (top-1 accuracy) or "mIoU"."""
        return "acc" if self.metric == TOP1 else self.metric

    @property
    def agreement_terms(self) -> tuple[str, str]:
        """What the INT8 agreement compares and over what: ("top-1", "images") for a
        classifier, ("class", "pixels") for a segmentation model."""
        return ("top-1", "images") if self.metric == TOP1 else ("class", "pixels")

    def to_dict(self) -> dict[str, Any]:
        """The deploy.json object."""
        out: dict[str, Any] = {"metric": self.metric}
        if self.input_shape is not None:
            out["input_shape"] = list(self.input_shape)
        out["config"] = dict(self.config)
        if self.images is not None:
            out["images"] = self.images
        return {
            **out,
            "bytes": {"float": self.float_bytes, "int8": self.int8_bytes},
            "accuracy": {k: v for k, v in vars(self.accuracy).items() if v is not None},
            "parity": self.parity.to_dict(),
            "latency": {k: [r.to_dict() for r in rows] for k, rows in self.latency.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeployRecord:
        """Read a deploy.json object; RecordError when it does not have its shape."""
        require_shape(data, DEPLOY, "deploy.json")
        shape = data.get("input_shape")
        return cls(
            float_bytes=data["bytes"]["float"],
            int8_bytes=data["bytes"]["int8"],
            accuracy=Accuracy(**{f.name: data["accuracy"].get(f.name) for f in fields(Accuracy)}),
            parity=Parity.from_dict(data["parity"]),
            latency={
                k: tuple(LatencyRow.from_dict(r) for r in rows)
                for k, rows in (data.get("latency") or {}).items()
            },
            config=dict(data.get("config") or {}),
            images=data.get("images"),
            input_shape=tuple(shape) if shape is not None else None,
            metric=data.get("metric", TOP1),
        )
