"""The deploy step: float and INT8 ONNX of a model, checked in ONNX Runtime, measured.

`deploy` folds BN, quantizes (calibrated on a few hundred images), writes `model.onnx` and
`model.int8.onnx` (by ONNX Runtime's quantizer, or by prunewise's with its scales in
`quant.json`: `Int8Config.backend`), evaluates the four variants (PyTorch float, PyTorch
fake-quant INT8, ORT float, ORT INT8) on the evaluation data, checks ORT against PyTorch, and
measures ORT latency. Everything lands in one JSON-ready record (`deploy.json`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prunewise.errors import PrunewiseError
from prunewise.export.onnx_export import (
    DEFAULT_OPSET,
    LOWEST_OPSET,
    export_float,
    export_int8,
    label_outputs,
    newest_opset,
)
from prunewise.export.ort_quant import ort_quantize
from prunewise.export.runtime import LatencyConfig, latency_grid, ort_logits, ort_session
from prunewise.given import check_images, inference_copy
from prunewise.io import atomic_write_json
from prunewise.quant import Int8Config, QuantizedModel, quantize
from prunewise.records.deploy import (
    FAKE_QUANT_REFERENCE,
    MIOU,
    TOP1,
    UNFUSED_QDQ_REFERENCE,
    Accuracy,
    DeployRecord,
    LatencyRow,
    Parity,
)
from prunewise.settings import Settings, nested, setting
from prunewise.train.metrics import confusion_matrix, iou_percent, main_output

__all__ = [
    "DEPLOY_FILES",
    "FLOAT_TOLERANCE",
    "INT8_AGREEMENT",
    "INT8_FLOAT_TOLERANCE",
    "MIOU",
    "TOP1",
    "DeployConfig",
    "deploy",
    "export_model",
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
        DEFAULT_OPSET,
        "ONNX opset (per-channel INT8 needs 13 or later; below 18 the TorchScript exporter "
        "writes it)",
        low=LOWEST_OPSET,
        high=30,
        flag="--opset",
    )

    def check(self) -> None:
        """The opset is one the installed onnx writes and ONNX Runtime runs (checked before a
        run's work)."""
        if self.opset <= DEFAULT_OPSET:  # runs everywhere: no probe (it imports onnxruntime)
            return
        newest = newest_opset()
        if self.opset > newest:
            why = "the newest the installed onnx and ONNX Runtime write and run"
            self.fail("opset", f"at most {newest}, {why}", self.opset)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class _MainOutput(nn.Module):
    """A model whose forward returns a dict, as the tensor it is scored on ("out")."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The "out" entry of the model's output (indexed as such, so that it traces)."""
        return self.model(x)["out"]


def _one_output(model: nn.Module, images: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """`model`, or, when its forward returns a dict (torchvision's segmentation models), a
    wrapper returning the dict's "out" tensor: ONNX files and INT8 have one output. With the
    output of the first two `images`."""
    with torch.no_grad():
        out = model(images[:2].float())
    if isinstance(out, torch.Tensor):
        return model, out
    return _MainOutput(model), main_output(out)  # a dict with an "out" tensor, or the error


class _Score:
    """A metric summed over batches of outputs (N, classes, ...) and labels (N, ...): top-1
    accuracy over images, or mean IoU over pixels (labels outside the classes ignored)."""

    def __init__(self, metric: str) -> None:
        self.metric, self.hits, self.count = metric, 0, 0
        self.confusion: torch.Tensor | None = None

    def add(self, outputs: np.ndarray, labels: np.ndarray) -> None:
        pred = outputs.argmax(1)
        if labels.shape != pred.shape:
            raise PrunewiseError(
                f"the test loader's labels are {labels.shape} for outputs {outputs.shape}: give "
                f"a class index per {'image' if self.metric == TOP1 else 'pixel'} "
                f"{pred.shape} (one-hot labels: labels.argmax(1))"
            )
        if self.metric == TOP1:
            if labels.size and (labels.min() < 0 or labels.max() >= outputs.shape[1]):
                raise PrunewiseError(
                    f"the test loader's labels run from {labels.min()} to {labels.max()}, the "
                    f"model scores {outputs.shape[1]} classes (0..{outputs.shape[1] - 1}): give "
                    "the data the model was made for"
                )
            self.hits += int((pred == labels).sum())
            self.count += int(labels.size)
            return
        classes = outputs.shape[1]
        part = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(labels).long(), classes)
        self.confusion = part if self.confusion is None else self.confusion + part

    def value(self) -> float:
        if self.metric == TOP1:
            if not self.count:
                raise PrunewiseError("the test loader gave no images; give one that yields some")
            return 100.0 * self.hits / self.count
        if self.confusion is None:
            raise PrunewiseError("cannot score segmentation without test images")
        return iou_percent(self.confusion)


def _images_and_labels(batch: Any) -> tuple[torch.Tensor, Any]:
    """A test batch as (float images, labels). Raises PrunewiseError for another form."""
    if isinstance(batch, list | tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        labels = batch[1].cpu() if isinstance(batch[1], torch.Tensor) else batch[1]
        return batch[0].float().cpu(), labels
    what = f"a dict with keys {sorted(batch)}" if isinstance(batch, dict) else type(batch).__name__
    raise PrunewiseError(
        f"the test loader must yield (images, labels) pairs, got {what}; wrap its dataset "
        "so that each item is (image, label)"
    )


class _ParityTally:
    """The deploy checks' sums over batches (`parity_summary` in one go)."""

    def __init__(self) -> None:
        self.float_diff = self.scale = 0.0
        self.agree = self.agree_float = self.count = 0
        self.err2 = self.norm2 = 0.0

    def add(self, tf: np.ndarray, of: np.ndarray, tref: np.ndarray, oq: np.ndarray) -> None:
        self.float_diff = max(self.float_diff, float(np.abs(of - tf).max(initial=0.0)))
        self.scale = max(self.scale, float(np.abs(tf).max(initial=0.0)))
        top = oq.argmax(1)
        self.agree += int((top == tref.argmax(1)).sum())
        self.agree_float += int((top == tf.argmax(1)).sum())
        self.count += int(top.size)
        self.err2 += float(np.square(oq.astype(np.float64) - tf).sum())
        self.norm2 += float(np.square(tf.astype(np.float64)).sum())

    def result(self, int8_reference: str) -> Parity:
        rel = self.float_diff / max(self.scale, 1e-12)
        n = max(self.count, 1)
        agree = self.agree / n
        if self.norm2 > 0:
            int8_error = float(np.sqrt(self.err2 / self.norm2))
        else:
            int8_error = 0.0 if self.err2 == 0 else float("inf")
        return Parity(
            float_max_rel_error=rel,
            int8_top1_agreement=agree,
            float_ok=rel <= FLOAT_TOLERANCE,
            int8_ok=agree >= INT8_AGREEMENT,
            int8_float_rel_error=int8_error,
            int8_float_top1_agreement=self.agree_float / n,
            int8_float_ok=int8_error <= INT8_FLOAT_TOLERANCE,
            int8_reference=int8_reference,
        )


def parity_summary(
    torch_float: np.ndarray,
    ort_float: np.ndarray,
    torch_int8: np.ndarray,
    ort_int8: np.ndarray,
    int8_reference: str = FAKE_QUANT_REFERENCE,
) -> Parity:
    """The deploy checks, with their verdicts. Arrays are outputs (N, classes) of a
    classifier, or (N, classes, H, W) of a segmentation model (agreement is then per pixel).

    - float: ORT float against PyTorch float, max relative error <= FLOAT_TOLERANCE;
    - int8: ORT INT8 against its reference `torch_int8` (named by `int8_reference`: the
      fake-quantized PyTorch model, or the INT8 file's QDQ graph run unfused), same top-1 on
      >= INT8_AGREEMENT;
    - int8_vs_float: ORT INT8 against the float model, relative L2 error of the logits
      <= INT8_FLOAT_TOLERANCE. The first two show that ONNX Runtime computes what PyTorch
      computes; only this one sees a quantization that is wrong in both (a lost bias, a
      clipped range), since ORT and the fake-quantized model then agree on the wrong numbers.
    """
    tally = _ParityTally()
    tally.add(torch_float, ort_float, torch_int8, ort_int8)
    return tally.result(int8_reference)


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
    Path(spec_path).unlink(missing_ok=True)  # another backend's scales: not this file's
    if float_path is not None:
        return ort_quantize(float_path, calibration.cpu(), config, path)
    if float_model is None:
        raise PrunewiseError("ONNX Runtime's quantizer needs the float model or its ONNX file")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".float-") as tmp:
        shape = qmodel.input_shape
        fpath = export_float(float_model, Path(tmp) / "float.onnx", shape, opset=opset)
        return ort_quantize(fpath, calibration.cpu(), config, path)


def export_model(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    int8: Int8Config | None = None,
    calibration: torch.Tensor | None = None,
    labels: Sequence[str] | None = None,
    progress: bool = True,
    opset: int = DEFAULT_OPSET,
) -> str:
    """Write one ONNX file of `model` (what `prunewise export` does) and say what it wrote.

    Float for inputs (batch, *input_shape), or with `int8` the INT8 QDQ model calibrated on
    `calibration` (N, *input_shape) by `int8.backend` (prunewise's scales beside it in
    `.quant.json`; one left there by an earlier export is removed for any other file). The
    file has one output as `deploy`'s do (a dict's "out" entry) and, with `labels` (as many as
    a classifier's outputs), the class of each output index (`label_outputs`); at ONNX
    `opset`. Raises PrunewiseError when the model does not export.
    """
    path = Path(path)
    model, out = _one_output(inference_copy(model), torch.zeros((2, *input_shape)))
    if int8 is None:
        export_float(model, path, input_shape, opset=opset)
        path.with_suffix(".quant.json").unlink(missing_ok=True)  # an INT8 file's scales
        what = f"float, input {tuple(input_shape)}"
    else:
        if calibration is None:
            raise PrunewiseError("an INT8 export needs calibration images")
        qmodel = quantize(model, calibration, int8, progress=progress)
        spec = path.with_suffix(".quant.json")
        write_int8(qmodel, calibration, path, spec, float_model=model, opset=opset)
        ort = int8.backend == "onnxruntime"
        what = "INT8 QDQ by " + ("ONNX Runtime" if ort else f"prunewise; {spec}")
    if labels and out.dim() == 2 and out.shape[1] == len(labels):  # a classifier with as many
        label_outputs(path, labels)
    return f"wrote {path} ({what})"


DEPLOY_FILES = ("deploy.json", "model.onnx", "model.int8.onnx", "quant.json")
"""What `deploy` writes into its folder (deploy.json last, when everything else is there)."""


def deploy(
    model: nn.Module,
    calibration: torch.Tensor,
    loader: DataLoader,
    out: str | Path,
    config: DeployConfig | None = None,
    *,
    progress: bool = False,
    metric: str = TOP1,
    labels: Sequence[str] | None = None,
) -> DeployRecord:
    """Quantize, export, check and time `model`; write the files and deploy.json into `out`;
    the record deploy.json holds.

    `metric`: TOP1 (a classifier; `loader` gives images and class labels) or MIOU (a
    segmentation model; labels are masks, 255 ignored). A model whose forward returns a dict
    is deployed as its "out" tensor. The test data is streamed: the outputs are not kept.
    `labels`: the class of each output index, recorded in both ONNX files (`label_outputs`).
    An earlier deploy's files in `out` (DEPLOY_FILES) are removed first. Raises
    PrunewiseError for another metric.
    """
    if metric not in (TOP1, MIOU):
        raise PrunewiseError(f"deploy scores {TOP1!r} or {MIOU!r}, got {metric!r}")
    config = DeployConfig.given(config)
    out = Path(out)
    if isinstance(loader, Sized) and len(loader) == 0:
        raise PrunewiseError("the test loader gave no images; give one that yields some")
    for name in DEPLOY_FILES:  # an earlier deploy's: never beside this one's, even if stopped
        (out / name).unlink(missing_ok=True)
    calibration = check_images(calibration, what="calibration images").cpu()
    model, _ = _one_output(inference_copy(model), calibration)
    qmodel = quantize(model, calibration, config.int8, progress=progress)
    shape = qmodel.input_shape
    float_path = export_float(model, out / "model.onnx", shape, opset=config.opset)
    int8_path = write_int8(
        qmodel, calibration, out / "model.int8.onnx", out / "quant.json",
        float_path=float_path, opset=config.opset,
    )  # fmt: skip
    if labels:
        for path in (float_path, int8_path):
            label_outputs(path, labels)
    onnxruntime = config.int8.backend == "onnxruntime"
    # no PyTorch twin for ONNX Runtime's quantizer: its reference is the file's QDQ graph as written
    reference = UNFUSED_QDQ_REFERENCE if onnxruntime else FAKE_QUANT_REFERENCE
    sessions = {
        "float": ort_session(float_path, threads=2),
        "int8": ort_session(int8_path, threads=2),
        "unfused": ort_session(int8_path, threads=2, optimize=False) if onnxruntime else None,
    }
    scores = {k: _Score(metric) for k in ("pytorch_float", "pytorch_int8", "ort_float", "ort_int8")}
    tally, images = _ParityTally(), 0
    with torch.no_grad():
        for batch in loader:
            x, y = _images_and_labels(batch)
            if x.shape[1:] != calibration.shape[1:]:
                raise PrunewiseError(
                    f"the test loader's images are {tuple(x.shape[1:])}, the calibration "
                    f"images and the exported model {tuple(calibration.shape[1:])}: give test "
                    "images of the model's input shape"
                )
            tf, tq = model(x).numpy(), qmodel.model(x).numpy()
            of, oq = ort_logits(sessions["float"], x), ort_logits(sessions["int8"], x)
            unfused = sessions["unfused"]
            tally.add(tf, of, ort_logits(unfused, x) if unfused is not None else tq, oq)
            labels = np.asarray(y)
            for key, outputs in zip(scores, (tf, tq, of, oq), strict=True):
                scores[key].add(outputs, labels)
            images += len(labels)
    latency = {}
    if config.measure_latency:
        for name, path in (("float", float_path), ("int8", int8_path)):
            grid = latency_grid(path, shape, config.latency, progress=progress)
            latency[name] = tuple(LatencyRow.from_dict(lat.to_dict()) for lat in grid)
    record = DeployRecord(
        float_bytes=float_path.stat().st_size,
        int8_bytes=int8_path.stat().st_size,
        accuracy=Accuracy(**{k: v.value() for k, v in scores.items()}),
        parity=tally.result(reference),
        latency=latency,
        config=config.to_dict(),
        images=images,
        input_shape=tuple(shape),
        metric=metric,
    )
    atomic_write_json(out / "deploy.json", record.to_dict())
    return record
