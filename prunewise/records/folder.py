"""The run folder: where each file of a run lives and which stages are finished."""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from prunewise.errors import PrunewiseError
from prunewise.io import atomic_write_json, cannot_write, read_json
from prunewise.records.run import StageMetrics, Summary
from prunewise.records.schema import shape_problem

__all__ = ["RunFolder", "close_log", "open_log", "read_checked", "stage_name"]

_LOCK = ".lock"


def stage_name(iteration: int) -> str:
    """'baseline' for iteration 0, else 'iter_NN'."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    return "baseline" if iteration == 0 else f"iter_{iteration:02d}"


@dataclass(frozen=True)
class RunFolder:
    """Paths and small readers/writers of one run's folder (`root`: a Path or a string)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        """The resolved configuration."""
        return self.root / "config.json"

    @property
    def data(self) -> Path:
        """What the run's data was (DataBundle.fingerprint): a resumed run checks it."""
        return self.root / "data.json"

    @property
    def log(self) -> Path:
        """The run log (appended to on resume)."""
        return self.root / "run.log"

    @property
    def summary(self) -> Path:
        """Written last: the per-iteration table and the kept iteration."""
        return self.root / "summary.json"

    @property
    def group_experiment(self) -> Path:
        """Paper A fig. 20 on the baseline."""
        return self.root / "group_experiment.json"

    def deploy_dir(self, iteration: int) -> Path:
        """Where a stage's ONNX files and deploy.json go: deploy/<stage>/."""
        return self.root / "deploy" / stage_name(iteration)

    def stage(self, iteration: int) -> Path:
        """The folder of one stage (0 = baseline)."""
        return self.root / stage_name(iteration)

    def file(self, iteration: int, name: str) -> Path:
        """A file of one stage: model.pt, metrics.json, analysis.json, plan.json, train_state.pt."""
        return self.stage(iteration) / name

    def metrics(self, iteration: int) -> StageMetrics | None:
        """The stage's metrics.json, or None when it has none yet.

        Raises RecordError when it is damaged."""
        path = self.file(iteration, "metrics.json")
        return StageMetrics.from_dict(_read_object(path)) if path.is_file() else None

    def finished_metrics(self, iteration: int) -> StageMetrics:
        """The metrics of a finished stage. Raises PrunewiseError when it is not finished."""
        m = self.metrics(iteration)
        if m is None or not m.done:
            raise PrunewiseError(
                f"{self.stage(iteration)} is not finished (no metrics.json marked done)"
            )
        return m

    def done(self, iteration: int) -> bool:
        """Whether the stage finished (its metrics say so and its model exists)."""
        m = self.metrics(iteration)
        return bool(m and m.done) and self.file(iteration, "model.pt").is_file()

    def write_metrics(self, metrics: StageMetrics) -> Path:
        """Atomically write the stage's metrics.json."""
        return atomic_write_json(self.file(metrics.iteration, "metrics.json"), metrics.to_dict())

    def read_summary(self) -> Summary:
        """summary.json (the loop is finished). Raises RecordError when it is damaged,
        PrunewiseError when there is none."""
        if not self.summary.is_file():
            raise PrunewiseError(f"{self.root} has no summary.json: the run is not finished")
        return Summary.from_dict(_read_object(self.summary))

    def write_summary(self, summary: Summary) -> Path:
        """Atomically write summary.json."""
        return atomic_write_json(self.summary, summary.to_dict())

    def finished_iterations(self) -> list[int]:
        """Numbers of the finished pruning iterations, in order, stopping at the first gap."""
        out = []
        k = 1
        while self.done(k):
            out.append(k)
            k += 1
        return out

    @property
    def failure(self) -> Path:
        """Written when an attempt ends with an error; removed when the run is resumed."""
        return self.root / "failed.json"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for this process (created if missing): a second process that asks
        while it is held gets an error naming the holder. The lock dies with the process."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise PrunewiseError(cannot_write(self.root, exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PrunewiseError(
                f"{self.root} is in use by another prunewise process (pid {holder}); wait for "
                "it to end (or stop it), then continue with --resume"
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def mark_failed(self, exc: BaseException) -> str:
        """Record why an attempt ended (the report and --resume show it); returns the text."""
        interrupted = isinstance(exc, KeyboardInterrupt)
        record = {
            "error": (f"interrupted ({exc})" if str(exc) else "interrupted")
            if interrupted
            else " ".join(str(exc).split()) or repr(exc),
            "type": type(exc).__name__,
            "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        with suppress(PrunewiseError):
            atomic_write_json(self.failure, record)
        return record["error"]


def read_checked(path: Path, schema: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) when `path` holds a JSON object of `schema` (records/schema.py);
    (None, None) when there is no such file; (None, why) when it is unreadable or damaged.
    Never raises: a report shows what it can."""
    if not path.is_file():
        return None, None
    where = f"{path.parent.name}/{path.name}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{where}: unreadable ({exc})"
    if not isinstance(data, dict):
        return None, f"{where}: damaged, not a JSON object; left out"
    found = shape_problem(data, schema)
    if found is not None:
        return None, f"{where}: damaged ({found}); left out"
    return data, None


def _read_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise PrunewiseError(f"{path} is damaged: not a JSON object")
    return data


class _TqdmHandler(logging.Handler):
    """Console log lines that do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


FILE_ONLY = "file_only"
"""A log record with this attribute true (`extra={FILE_ONLY: True}`) goes to run.log only."""


def _to_console(record: logging.LogRecord) -> bool:
    """A record the console shows: not `FILE_ONLY`, and at or above the level a caller set on
    the "prunewise" logger (`logging.getLogger("prunewise").setLevel(logging.WARNING)` keeps
    the console to warnings; run.log has every line)."""
    return not getattr(record, FILE_ONLY, False) and record.levelno >= _LIBRARY.level


_LIBRARY = logging.getLogger("prunewise")


def open_log(folder: RunFolder, *, main: bool, console: bool = True) -> logging.Logger:
    """A logger writing to run.log (rank 0 only) and the console (`_to_console` records)."""
    logger = logging.getLogger(f"prunewise.run.{folder.root.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if main:
        folder.root.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(folder.log, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(fh)
        if console:
            ch = _TqdmHandler()
            ch.setFormatter(logging.Formatter("%(message)s"))
            ch.addFilter(_to_console)
            logger.addHandler(ch)
    else:
        logger.addHandler(logging.NullHandler())
    return logger


def close_log(logger: logging.Logger) -> None:
    """Close the handlers `open_log` attached and forget the logger (one per run folder)."""
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logging.Logger.manager.loggerDict.pop(logger.name, None)
