"""Run exported ONNX models with ONNX Runtime (CPU): logits, accuracy, agreement and latency.

Sessions are single-stream (sequential execution, one inter-op thread) with all graph
optimisations on, so latency numbers depend only on the intra-op thread count and batch size.
Models exported with a fixed batch dimension work too: inputs are fed in chunks of exactly that
size, the last chunk padded with zeros and the padded rows dropped.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from prunewise.errors import PrunewiseError, first_line
from prunewise.progress import progress_bar
from prunewise.resources import free_if_short, gigabytes
from prunewise.settings import Settings, setting, spec_of

if TYPE_CHECKING:  # onnxruntime is imported when a session is opened, not with this module
    import onnxruntime as ort

__all__ = [
    "Latency",
    "LatencyConfig",
    "latency_grid",
    "measure_latency",
    "onnx_input_shape",
    "optimized_ops",
    "ort_accuracy",
    "ort_agreement",
    "ort_logits",
    "ort_session",
]


def _ort_errors() -> tuple[type[BaseException], ...]:
    """What InferenceSession raises for unreadable or invalid models."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    kinds = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile")
    return (*(getattr(state, k) for k in (*kinds, "RuntimeException")), RuntimeError, OSError)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int, why: str = "") -> None:
    if not _is_int(value) or value < minimum:
        raise PrunewiseError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")


def _fmt(shape: Iterable[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _open(
    path: str | Path, threads: int, level: str, save_to: Path | None = None
) -> ort.InferenceSession:
    """A CPU session; `level` names an ort.GraphOptimizationLevel; `save_to`: where ONNX
    Runtime writes the graph it optimised."""
    _check_int("threads", threads, 1)
    path = Path(path)
    if path.is_dir():
        raise PrunewiseError(f"no such ONNX file: {path} is a directory; give the .onnx file")
    if not path.is_file():
        raise PrunewiseError(f"no such ONNX file: {path}; check the path or export the model first")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
        opts.log_severity_level = 3  # not the notice that NCHWc layouts are machine-specific
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except _ort_errors() as exc:
        raise PrunewiseError(
            f"{path} is not a valid ONNX model ({first_line(exc)}); re-export it"
        ) from exc


def ort_session(
    path: str | Path, *, threads: int = 1, optimize: bool = True
) -> ort.InferenceSession:
    """Open an ONNX file on the CPU provider with `threads` intra-op threads, fully optimised;
    with `optimize=False` ONNX Runtime runs the graph as written (a QDQ model's
    DequantizeLinear / float op / QuantizeLinear, not its fused integer kernels)."""
    return _open(path, threads, "ORT_ENABLE_ALL" if optimize else "ORT_DISABLE_ALL")


def optimized_ops(path: str | Path, *, layout: bool = True) -> list[str]:
    """The operator types, in order, of the graph ONNX Runtime runs after optimising the file:
    how a QDQ model was fused (QLinearConv, QLinearAdd, QGemm; a float Conv left). With
    `layout=False` the CPU layout transforms (NCHWc reorders) are left out
    (ORT_ENABLE_EXTENDED). Raises PrunewiseError for a missing or invalid file."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="prunewise-ort-") as tmp:
        saved = Path(tmp) / "optimized.onnx"
        _open(path, 1, "ORT_ENABLE_ALL" if layout else "ORT_ENABLE_EXTENDED", save_to=saved)
        return [n.op_type for n in onnx.load(saved).graph.node]


def onnx_input_shape(path_or_session: str | Path | ort.InferenceSession) -> tuple[int | None, ...]:
    """The first input's shape, with None for symbolic (dynamic) dimensions."""
    if not isinstance(path_or_session, str | Path):  # a session
        session = path_or_session
    else:  # no optimisation: we only read the declared inputs
        session = _open(path_or_session, 1, "ORT_DISABLE_ALL")
    shape = session.get_inputs()[0].shape
    return tuple(int(d) if _is_int(d) and d > 0 else None for d in shape)


def _model_input(session: ort.InferenceSession) -> tuple[str, tuple[int | None, ...]]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise PrunewiseError(
            f"the model has {len(inputs)} inputs {names}; need a model with one image input"
        )
    if inputs[0].type != "tensor(float)":
        raise PrunewiseError(
            f"the model's input {inputs[0].name!r} is {inputs[0].type}; need a float32 "
            "(tensor(float)) input; re-export the model in float32"
        )
    return inputs[0].name, onnx_input_shape(session)


def _check_image_shape(where: str, model: tuple[int | None, ...], image: tuple[int, ...]) -> None:
    expected = model[1:]
    if len(expected) != len(image) or any(
        m is not None and m != i for m, i in zip(expected, image, strict=False)
    ):
        raise PrunewiseError(
            f"images have shape {_fmt(image)} but the model expects {_fmt(expected)} per image "
            f"({where} is {_fmt(model)}, '?' = any); resize the images or re-export the "
            "model for this input size"
        )


def _as_array(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise PrunewiseError(
            f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}"
        )
    return x


def ort_logits(
    session: ort.InferenceSession, images: torch.Tensor | np.ndarray, *, batch_size: int = 256
) -> np.ndarray:
    """Run `images` (N, C, H, W) through the model in batches; the first output, concatenated."""
    _check_int("batch_size", batch_size, 1)
    x = np.ascontiguousarray(_as_array(images, "images"), dtype=np.float32)
    name, shape = _model_input(session)
    if x.ndim < 1 or x.shape[0] == 0:
        raise PrunewiseError(f"images has shape {x.shape}; pass at least one image (N, C, H, W)")
    _check_image_shape(f"input {name!r}", shape, tuple(x.shape[1:]))
    fixed = shape[0]
    step = fixed if fixed is not None else int(batch_size)
    output = session.get_outputs()[0].name
    chunks = []
    for start in range(0, x.shape[0], step):
        chunk = x[start : start + step]
        rows = chunk.shape[0]
        if fixed is not None and rows < fixed:
            pad = np.zeros((fixed - rows, *chunk.shape[1:]), dtype=np.float32)
            chunk = np.concatenate([chunk, pad])
        chunks.append(session.run([output], {name: chunk})[0][:rows])
    return np.concatenate(chunks)


def ort_accuracy(session: ort.InferenceSession, loader: Iterable[Any]) -> float:
    """Top-1 accuracy in percent over a loader yielding (images, labels)."""
    correct = total = 0
    for images, labels in loader:
        y = _as_array(labels, "labels").reshape(-1)
        logits = ort_logits(session, images, batch_size=max(len(y), 1))
        if logits.shape[0] != y.shape[0]:
            raise PrunewiseError(f"a batch has {logits.shape[0]} images but {y.shape[0]} labels")
        correct += int((logits.argmax(axis=1) == y).sum())
        total += y.shape[0]
    if total == 0:
        raise PrunewiseError("the loader yielded no images; accuracy needs at least one")
    return 100.0 * correct / total


def ort_agreement(
    session: ort.InferenceSession,
    images: torch.Tensor | np.ndarray,
    reference_logits: torch.Tensor | np.ndarray,
) -> float:
    """Fraction (0..1) of images whose ORT argmax equals the reference logits' argmax."""
    ref = _as_array(reference_logits, "reference_logits")
    logits = ort_logits(session, images)
    if ref.ndim != 2 or ref.shape[0] != logits.shape[0]:
        raise PrunewiseError(
            f"reference_logits has shape {ref.shape} but ORT gave {logits.shape}; "
            "pass one row of logits per image"
        )
    return float((logits.argmax(axis=1) == ref.argmax(axis=1)).mean())


def _check_timing(warmup: Any, repeats: Any, max_seconds: Any) -> None:
    for name, value in (("warmup", warmup), ("repeats", repeats), ("max_seconds", max_seconds)):
        spec_of(LatencyConfig, name).check(value, name)


@dataclass(frozen=True)
class LatencyConfig(Settings):
    """Which (batch size, thread count) pairs to time, and how many runs each."""

    section: ClassVar[str] = "deploy.latency"

    batch_sizes: tuple[int, ...] = setting(
        (1, 32), "batch sizes to time", kind="ints", low=1, high=65536, flag="--batch-sizes"
    )
    threads: tuple[int, ...] = setting(
        (1, 2), "intra-op thread counts", kind="ints", low=1, high=1024, flag="--threads"
    )
    warmup: int = setting(5, "untimed runs first", low=0, high=10_000, flag="--warmup")
    repeats: int = setting(
        30,
        "most timed runs per setting (the percentiles need at least 3)",
        low=3,
        high=100_000,
        flag="--repeats",
    )
    max_seconds: float = setting(
        20.0,
        "stop timing a setting after this long, after at least 3 runs",
        low=0,
        high=86400,
        low_open=True,
        flag="--max-seconds",
    )


@dataclass(frozen=True)
class Latency:
    """Timing of one (batch, threads) setting, in milliseconds per `session.run`."""

    batch: int
    threads: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def __post_init__(self) -> None:
        _check_int("batch", self.batch, 1)
        _check_int("threads", self.threads, 1)
        _check_int("runs", self.runs, 1)
        times = (self.p10_ms, self.median_ms, self.p90_ms)
        if not all(isinstance(t, int | float) and math.isfinite(t) and t >= 0 for t in times):
            raise PrunewiseError(f"latencies must be finite numbers >= 0 ms, got {times}")
        if not self.median_ms > 0 or not self.p10_ms <= self.median_ms <= self.p90_ms:
            raise PrunewiseError(f"need 0 < median and p10 <= median <= p90, got {times} ms")

    @property
    def fps(self) -> float:
        """Images per second at the median latency."""
        return self.batch * 1000.0 / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        """The fields plus fps, as a JSON-ready dict."""
        return {**asdict(self), "fps": self.fps}


def _check_batch(
    path: str | Path, model: tuple[int | None, ...], batch: int, name: str = "input"
) -> None:
    if model and model[0] is not None and model[0] != batch:
        raise PrunewiseError(
            f"{path} has a fixed batch size of {model[0]} but batch={batch} was asked for; time "
            f"batch={model[0]} or re-export with dynamic_axes={{{name!r}: {{0: 'batch'}}}}"
        )


def _time(
    session: ort.InferenceSession, shape: tuple[int, ...], batch: int, threads: int, seed: int,
    warmup: int, repeats: int, max_seconds: float,
) -> Latency:  # fmt: skip
    name, _ = _model_input(session)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape), dtype=np.float32)
    feed = {name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    while len(times) < repeats:
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
        if len(times) >= 3 and sum(times) > max_seconds:
            break
    p10, median, p90 = np.percentile(np.asarray(times) * 1000.0, [10, 50, 90])
    return Latency(batch, threads, float(median), float(p10), float(p90), len(times))


def _check_input_shape(
    path: str | Path,
    model: tuple[int | None, ...],
    input_shape: Any,
    batches: Iterable[int],
    name: str = "input",
) -> tuple[int, ...]:
    if (
        not isinstance(input_shape, tuple | list)
        or not input_shape
        or not all(_is_int(d) and d > 0 for d in input_shape)
    ):
        raise PrunewiseError(
            f"input_shape must be a tuple of positive integers without the batch, such as "
            f"(3, 32, 32), got {input_shape!r}"
        )
    shape = tuple(int(d) for d in input_shape)
    _check_image_shape(f"the input of {path}", model, shape)
    for batch in batches:
        _check_batch(path, model, batch, name)
    largest = 4 * math.prod(shape) * max(batches, default=1)  # the float32 input batch alone
    if (free := free_if_short(largest)) is not None:
        raise PrunewiseError(
            f"an input batch of {max(batches, default=1)} x {_fmt(shape)} takes "
            f"{gigabytes(largest)}, more than the {gigabytes(free)} free; use smaller batches "
            "or a model of a smaller input"
        )
    return shape


def measure_latency(
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    batch: int,
    threads: int,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 20.0,
    seed: int = 0,
) -> Latency:
    """Time `session.run` on a seeded random (batch, *input_shape) input: median, p10, p90."""
    _check_int("batch", batch, 1)
    _check_int("threads", threads, 1)
    _check_int("seed", seed, 0)
    _check_timing(warmup, repeats, max_seconds)
    session = ort_session(path, threads=threads)
    name, declared = _model_input(session)
    shape = _check_input_shape(path, declared, input_shape, [batch], name)
    return _time(session, shape, batch, threads, seed, warmup, repeats, max_seconds)


def latency_grid(
    path: str | Path,
    input_shape: tuple[int, ...] | None,
    config: LatencyConfig,
    *,
    progress: bool = False,
) -> list[Latency]:
    """Time every (threads, batch) pair of `config`, one session per thread count.
    `input_shape` (C, H, W) None takes the model's own when it is fixed (PrunewiseError
    otherwise)."""
    if not isinstance(config, LatencyConfig):
        raise PrunewiseError(f"config must be a LatencyConfig, got {type(config).__name__}")
    name, declared = _model_input(_open(path, 1, "ORT_DISABLE_ALL"))  # one float image input
    if input_shape is None:
        if any(d is None for d in declared[1:]):
            raise PrunewiseError(
                f"the input size of {path} is not fixed; pass it (input_shape=, --input-size C,H,W)"
            )
        input_shape = tuple(int(d) for d in declared[1:])  # type: ignore[arg-type]
    shape = _check_input_shape(path, declared, input_shape, config.batch_sizes, name)
    results = []
    total = len(config.threads) * len(config.batch_sizes)
    with progress_bar(total=total, desc="latency", unit="setting", show=progress) as bar:
        for threads in config.threads:
            session = ort_session(path, threads=threads)
            for batch in config.batch_sizes:
                bar.set_postfix(threads=threads, batch=batch)
                timing = (config.warmup, config.repeats, config.max_seconds)
                results.append(_time(session, shape, batch, threads, 0, *timing))
                bar.update()
    return results
