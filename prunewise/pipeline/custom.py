"""Paper A's iterative job on your model, with your fine-tuning and your metric (Python API).

    result = prune_iteratively(
        model, example_input, finetune=my_finetune, evaluate=my_miou, out="runs/seg",
        config=LoopConfig(metric="mIoU", tolerance=1.0),
    )

The loop (pipeline/loop.py) is the one `prunewise run` uses: each stage's model.pt and
metrics.json are written when it finishes, and calling again with `resume=True` continues
from the last finished iteration (and from the last finished epoch when the fine-tune takes a
`session`), recomputing nothing that finished.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import numbers
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.given import check_images, model_dtype
from prunewise.graph import build_channel_graph
from prunewise.io import load_state, read_json
from prunewise.pipeline.config import FinetuneConfig, RunConfig, build_settings
from prunewise.pipeline.job import CUSTOM_JOB, check_job_folder, claim_folder
from prunewise.pipeline.loop import Job, iterate
from prunewise.pipeline.run import RunResult
from prunewise.prune import RefinedConfig, get_scope
from prunewise.records import LOOP_FORMAT, RUN_FORMAT, RunFolder
from prunewise.report import build_report
from prunewise.settings import Settings, nested, same_as, setting
from prunewise.train import TrainState
from prunewise.train.state import to_cpu

__all__ = [
    "LOOP_FORMAT",
    "Finetune",
    "FinetuneSession",
    "LoopConfig",
    "UserWork",
    "prune_iteratively",
]


@dataclass(frozen=True)
class LoopConfig(Settings):
    """Settings of `prune_iteratively`: paper A's policy and stop rule, in your metric."""

    section: ClassVar[str] = "loop"

    metric: str = setting("score", "name of evaluate's score (higher is better), e.g. mIoU")
    unit: str | None = setting(None, "unit written after the score's values, e.g. %", kind="str")
    policy: RefinedConfig = nested(RefinedConfig)
    finetune: FinetuneConfig = nested(FinetuneConfig)
    tolerance: float = setting(
        1.5,
        "stop when the score falls more than this below the baseline's (in its own units)",
        low=0,
    )
    max_iterations: int = same_as(RunConfig, "max_iterations")
    analysis_images: int = setting(
        100,
        "at most this many of the example inputs measure input sparsity (1 = the paper)",
        low=1,
        high=1_000_000,
    )
    progress: bool = setting(True, "progress bar over the iterations")
    scope: str | None = setting(
        None,
        "prune only this sub-module (a detector's 'backbone'), the rest of the model kept; "
        "example_input is then what that sub-module receives",
        kind="str",
    )

    def to_dict(self) -> dict[str, Any]:
        """config.json of the job (the report reads `model` and `data` as a run's)."""
        return {"format": LOOP_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> LoopConfig:
        """Inverse of `to_dict` (extra `model` and `data` tables are the job's, not settings)."""
        if isinstance(data, dict) and data.get("format", RUN_FORMAT) == RUN_FORMAT:
            raise PrunewiseError(
                "it is the configuration of a `prunewise run`, not of a prune_iteratively job; "
                "continue that with `prunewise run --resume DIR`"
            )
        if not isinstance(data, dict) or data.get("format") != LOOP_FORMAT:
            raise PrunewiseError(
                f"not the configuration of a prune_iteratively job ({LOOP_FORMAT})"
            )
        skip = ("format", "model", "data")
        return build_settings(cls, {k: v for k, v in data.items() if k not in skip})


class Finetune(Protocol):
    """`finetune(model, epochs, teacher)`: train `model` in place for `epochs`; `teacher` is
    the model to distil from (LoopConfig.finetune.teacher), in eval mode, or None. A fine-tune
    that also names a parameter `session` (a FinetuneSession) can be resumed after each epoch."""

    def __call__(self, model: nn.Module, epochs: int, teacher: nn.Module | None) -> Any: ...


@dataclass
class FinetuneSession:
    """Handed to a fine-tune that takes `session`: where to start and how to report an epoch.

    `iteration` is the pruning iteration (1, 2, ...; to seed by, say). `start_epoch` epochs
    finished before an interruption (the model already holds their weights); `state` is the
    dict the fine-tune gave `epoch_done` with the last of them (its optimizer's and
    scheduler's state dicts, say), or None on a fresh start. Run the epochs from
    `start_epoch` to `epochs`, and call `epoch_done(state, **metrics)` after each.
    """

    path: Path
    model: nn.Module
    epochs: int
    iteration: int
    start_epoch: int = 0
    state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def epoch_done(self, state: dict[str, Any] | None = None, **metrics: float) -> None:
        """Save the model's weights and `state` after one more epoch (atomically).

        `state` holds tensors, numbers, strings, lists and dicts only: it is read back with
        `weights_only=True`. Raises PrunewiseError when it holds anything else.
        """
        if state is not None and not isinstance(state, dict):
            raise PrunewiseError(
                f"session.epoch_done takes a dict as its state, got {type(state).__name__}"
            )
        done = len(self.history) + 1
        if done > self.epochs:
            raise PrunewiseError(
                f"session.epoch_done called for epoch {done} of a {self.epochs}-epoch fine-tune"
            )
        numbers_of = {k: one_number(v, f"session.epoch_done's {k}") for k, v in metrics.items()}
        self.history.append({"epoch": done, **numbers_of})
        weights = to_cpu(self.model.state_dict())
        snapshot = TrainState(done, weights, to_cpu(state or {}), self.history)
        try:
            snapshot.save(self.path)
            TrainState.load(self.path)
        except (PrunewiseError, pickle.PicklingError, AttributeError, TypeError) as exc:
            self.path.unlink(missing_ok=True)
            raise PrunewiseError(
                "session.epoch_done: the state cannot be read back without running code "
                "(weights_only=True); keep to tensors, numbers, strings, lists and dicts "
                "(optimizer.state_dict() is fine)"
            ) from exc

    @classmethod
    def open(cls, path: Path, model: nn.Module, epochs: int, iteration: int) -> FinetuneSession:
        """A session continuing what `path` holds (its weights loaded into `model`), else new."""
        if not path.is_file():
            return cls(path, model, epochs, iteration)
        saved = TrainState.load(path)
        load_state(model, saved.model_state)
        state = saved.optimizer_state or None
        history = list(saved.history)
        return cls(path, model, epochs, iteration, saved.epochs_done, state, history)


def _takes_session(fn: Callable[..., Any]) -> bool:
    """Whether `fn` names a parameter `session` (a **kwargs alone does not say it reports)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "session" in params and params["session"].kind is not inspect.Parameter.POSITIONAL_ONLY


@contextmanager
def _eval_mode(module: nn.Module | None) -> Iterator[None]:
    """`module` in eval mode for the block, its own mode restored after (None: nothing)."""
    if module is None:
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@dataclass
class UserWork:
    """The user's model, fine-tune and evaluate as the loop's `Work`."""

    model: nn.Module
    inputs: torch.Tensor
    finetune: Finetune
    evaluate: Callable[[nn.Module], float]
    log: logging.Logger
    metric: str = "score"
    unit: str = ""

    def baseline(self, state: Path) -> tuple[nn.Module, dict[str, Any]]:
        """The model as given: it is the baseline, not trained here."""
        return self.model, {"source": f"python:{type(self.model).__qualname__}", "epochs": []}

    def fit(
        self, k: int, model: nn.Module, epochs: int, teacher: nn.Module | None, state: Path
    ) -> list[dict[str, Any]]:
        """The user's fine-tune on `model` in train mode, the teacher in eval mode (its batch
        norm statistics are not moved by the student's batches, so every iteration and a
        resumed job distil from the same teacher); resumable when it takes `session`."""
        if epochs == 0:
            return []
        model.train()
        with _eval_mode(teacher):
            if not _takes_session(self.finetune):
                self.finetune(model, epochs, teacher)
                return []
            session = FinetuneSession.open(state, model, epochs, k)
            if session.start_epoch:
                self.log.info(f"iter {k} fine-tune: resuming after epoch {session.start_epoch}")
            if session.start_epoch < epochs:
                self.finetune(model, epochs, teacher, session=session)
        if len(session.history) < epochs:
            self.log.warning(
                f"iter {k} fine-tune returned after reporting {len(session.history)} of "
                f"{epochs} epochs with session.epoch_done: an interrupted job restarts its "
                "fine-tune from the last epoch reported"
            )
        return session.history

    def score(self, model: nn.Module) -> tuple[float, None]:
        """evaluate(model) in eval mode, checked to be a finite number."""
        with _eval_mode(model):
            value = self.evaluate(model)
        return one_number(value, f"evaluate's {self.metric} (higher is better)"), None

    def images(self) -> torch.Tensor:
        """The example inputs the job was given (already cut to analysis_images)."""
        return self.inputs

    def scores_meta(self, val: float, test: float | None) -> dict[str, Any]:
        """The metric's name and value."""
        return {"metric": self.metric, "score": val}


def one_number(value: object, what: str) -> float:
    """`value` (a number, a NumPy scalar or array of one element, a tensor of one element)
    as a finite float. Raises PrunewiseError naming `what` for anything else."""
    if isinstance(value, torch.Tensor | np.ndarray) and math.prod(value.shape) == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrunewiseError(f"{what} must be one number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise PrunewiseError(f"{what} is {value}; it must be finite")
    return float(value)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _config_for(folder: RunFolder, given: LoopConfig | None, resume: bool) -> LoopConfig:
    given = None if given is None else LoopConfig.given(given)
    check_job_folder(folder, CUSTOM_JOB, resume=resume)
    if not resume:
        return given or LoopConfig()
    try:
        stored = LoopConfig.from_dict(read_json(folder.config))
    except PrunewiseError as exc:
        raise PrunewiseError(f"{folder.config} cannot be resumed here: {exc}") from exc
    if given is None:
        return stored
    if dataclasses.replace(given, progress=stored.progress) != stored:  # a bar changes nothing
        raise PrunewiseError(
            f"{folder.root} was started with other settings; pass the same LoopConfig "
            "(or config=None to take the stored one), or start a new folder"
        )
    return given


def prune_iteratively(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    finetune: Finetune,
    evaluate: Callable[[nn.Module], float],
    out: str | Path,
    config: LoopConfig | None = None,
    resume: bool = False,
    report: bool = True,
) -> RunResult:
    """Prune `model` iteratively (paper A, algorithm 1) with your fine-tune and metric.

    `model` (trained, on its device) is the baseline and is not changed; `example_input` is a
    batch (N, C, H, W) of real inputs: its shape fixes the traced input size and its first
    `config.analysis_images` images measure input sparsity. Each iteration prunes, calls
    `finetune(model, config.finetune.epochs, teacher)` and scores with `evaluate(model)`
    (one number, higher is better); the loop stops when the score falls more than
    `config.tolerance` below the baseline's. With `resume=True` the job in `out` continues.

    With `config.scope` ("backbone", say) only that sub-module is traced, measured and pruned
    (its input and output channels fixed), and `example_input` is what it receives; the
    callables still get the whole model. Each stage then saves the part (model.pt) and the
    other weights (outer.pt), and a resumed job rebuilds its models on the `model` passed.

    Returns the run folder, summary and report (docs/run-folder.md). Raises PrunewiseError when
    the model (or its scope) cannot be traced at that input size, the folder already holds a
    run (without `resume`), or evaluate does not return a finite number.
    """
    if not isinstance(model, nn.Module):
        raise PrunewiseError(f"model must be an nn.Module, got {type(model).__name__}")
    example_input = check_images(example_input, dtype=model_dtype(model), what="example_input")
    for name, fn in (("finetune", finetune), ("evaluate", evaluate)):
        if not callable(fn):
            raise PrunewiseError(f"{name} must be callable, got {type(fn).__name__}")
    folder = RunFolder(Path(out))
    config = _config_for(folder, config, resume)
    device = _device(model)
    shape = tuple(example_input.shape[1:])
    part = get_scope(model, config.scope) if config.scope else model
    try:  # refuse an untraceable model before writing anything
        build_channel_graph(part, shape)
    except PrunewiseError as exc:
        if example_input.dim() != 3:
            raise
        raise PrunewiseError(
            f"{exc}; example_input is a batch (N, C, H, W): for one image of shape "
            f"{tuple(example_input.shape)} pass example_input.unsqueeze(0)"
        ) from exc
    inputs = example_input[: config.analysis_images].to(device)
    record = {
        **config.to_dict(),
        "model": {"name": f"python:{type(model).__qualname__}"},
        "data": {"name": "your data"},
    }
    with claim_folder(folder, record, resume=resume, kind=CUSTOM_JOB) as log:
        log.info(f"{'resuming' if resume else 'starting'} job in {folder.root}")
        work = UserWork(model, inputs, finetune, evaluate, log, config.metric, config.unit or "")
        job = Job(
            config=config,
            folder=folder,
            work=work,
            device=device,
            log=log,
            input_shape=shape,
            progress=config.progress,
            meta={"model": record["model"]["name"], "scope": config.scope},
            scope=config.scope,
            outer=model,
        )
        if not folder.summary.is_file():
            iterate(job)
        report_path = build_report(folder.root) if report else None
        return RunResult(folder.root, folder.read_summary(), report_path)
