"""The job runner every long command shares (`prunewise run`, `prune_iteratively`,
`prunewise sparsify`): a job folder that is started once, resumed with the same options,
held by one process, marked when an attempt fails; and stages that are skipped when done,
run on rank 0, written atomically and waited for by every rank.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunewise.errors import PrunewiseError, Stopped, listing
from prunewise.io import atomic_write_json, read_json
from prunewise.records import RunFolder, close_log, open_log
from prunewise.records.folder import FILE_ONLY
from prunewise.train import DistContext

__all__ = [
    "CUSTOM_JOB",
    "RUN_JOB",
    "SPARSIFY_JOB",
    "JobKind",
    "check_job_folder",
    "claim_folder",
    "stage",
]


@dataclass(frozen=True)
class JobKind:
    """How messages name a kind of job ("run"), and how its user resumes or starts one
    (`{root}` is replaced by the folder)."""

    what: str
    resume_hint: str
    start_hint: str


RUN_JOB = JobKind(
    "run",
    "continue it with `prunewise run --resume {root}`",
    "start a run with `prunewise run --out DIR`",
)
CUSTOM_JOB = JobKind("run", "continue it with resume=True", "start one with resume=False")
SPARSIFY_JOB = JobKind("sparsify job", "add --resume to continue it", "drop --resume")


def check_job_folder(folder: RunFolder, kind: JobKind, *, resume: bool) -> None:
    """Refuse to start a job over another one, or to resume where none was started."""
    root = folder.root
    if resume and not folder.config.is_file():
        raise PrunewiseError(
            f"{root} holds no {kind.what} to resume (no config.json); "
            f"{kind.start_hint.format(root=root)}"
        )
    if not resume and folder.config.exists():
        raise PrunewiseError(
            f"{root} already holds a {kind.what}; {kind.resume_hint.format(root=root)} or "
            "choose another folder (--out; out= in Python)"
        )
    links = _links(root)
    if links:
        raise PrunewiseError(
            f"{root} holds symbolic links ({listing(links, 3)}): prunewise writes its files in "
            "the folder itself and would write through them; remove them"
        )
    new_here = not resume and root.is_dir()
    others = (
        sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if new_here else []
    )
    if others:  # another job's files without its config.json, or someone else's
        raise PrunewiseError(
            f"{root} is not empty ({listing(others, 3)}) and holds no {kind.what} "
            "(no config.json): a new one starts in a new or empty folder; choose another "
            "folder (--out; out= in Python)"
        )


def _links(root: Path) -> list[str]:
    """Symbolic links in a job folder and its stage folders (the files it writes)."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        if entry.is_symlink():
            found.append(entry.name)
        elif entry.is_dir():
            found += [f"{entry.name}/{e.name}" for e in entry.iterdir() if e.is_symlink()]
    return sorted(found)


def _terminated(signum: int, _frame: object) -> None:
    raise Stopped(signum)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While a job holds its folder, SIGTERM (timeout, docker stop, a batch scheduler) stops it
    as Ctrl-C does: failed.json and the log say so, and a resume continues it. Only the main
    thread can take signals; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextmanager
def claim_folder(
    folder: RunFolder,
    config: Mapping[str, Any],
    *,
    resume: bool,
    dist: DistContext | None = None,
    kind: JobKind = RUN_JOB,
    same: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[logging.Logger]:
    """Hold `folder` for this job. A new job refuses a folder that holds one and writes
    `config` (config.json); a resumed one is checked by `same` (given the saved config: raise
    when the options differ) and clears failed.json. Yields the job's log; an attempt that
    ends with an error (or an interrupt) writes failed.json. Rank 0 alone touches the folder;
    every rank learns its verdict."""
    dist = dist or DistContext()
    with ExitStack() as stack:
        problem = None
        if dist.is_main:
            try:
                check_job_folder(folder, kind, resume=resume)
                stack.enter_context(folder.lock())
                check_job_folder(folder, kind, resume=resume)  # again, under the lock
                if resume:
                    if same is not None:
                        same(read_json(folder.config))
                    folder.failure.unlink(missing_ok=True)
                else:
                    atomic_write_json(folder.config, dict(config))
            except PrunewiseError as exc:
                problem = str(exc)
        problem = dist.broadcast_object(problem)
        if problem is not None:
            raise PrunewiseError(problem)
        log = open_log(folder, main=dist.is_main)
        stack.enter_context(_sigterm_interrupts())
        try:
            yield log
        except BaseException as exc:
            lost = dist.peer_lost(exc)
            if dist.is_main:
                told = lost or exc
                log.error(f"stopped: {folder.mark_failed(told)}", extra={FILE_ONLY: True})
            if lost is not None:
                raise lost from exc
            raise
        finally:
            close_log(log)


def stage(
    path: Path, make: Callable[[], Mapping[str, Any]], *, dist: DistContext | None = None
) -> dict[str, Any]:
    """A stage's record: read back when `path` exists (the stage finished earlier), else made
    by `make` on rank 0 and written atomically; every rank returns it after a barrier."""
    dist = dist or DistContext()
    if not path.is_file() and dist.is_main:
        atomic_write_json(path, dict(make()))
    dist.barrier()
    return read_json(path)
