"""Where training runs: the device, the process group under torchrun, and the sharded train loader.

`init_distributed` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK when it is called (never at
import); without them everything is a single process and `DistContext()` makes every collective
a no-op. `make_train_loader` shuffles through a `DistributedSampler` in both cases, so the order
of epoch e depends only on (seed, e) and each rank sees its own shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from prunewise.errors import PrunewiseError

__all__ = [
    "DistContext",
    "init_distributed",
    "make_train_loader",
    "pick_device",
    "shutdown_distributed",
]

BACKENDS = ("gloo", "nccl")
"""Process-group backends: gloo for CPU training, nccl for CUDA."""


def pick_device(spec: str = "auto") -> torch.device:
    """CUDA when available for 'auto'; otherwise the named device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise PrunewiseError(f"device {spec!r} asked for, but CUDA is not available here")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise PrunewiseError(f"unknown device {spec!r}; use auto, cpu or cuda[:N]") from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    def __post_init__(self) -> None:
        if not (_is_int(self.world_size) and self.world_size >= 1):
            raise PrunewiseError(f"world_size must be an int >= 1, got {self.world_size!r}")
        if not (_is_int(self.rank) and 0 <= self.rank < self.world_size):
            raise PrunewiseError(
                f"rank must be an int in [0, {self.world_size}), got {self.rank!r}"
            )
        if not (_is_int(self.local_rank) and self.local_rank >= 0):
            raise PrunewiseError(f"local_rank must be an int >= 0, got {self.local_rank!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise PrunewiseError(
                f"backend must be one of {', '.join(BACKENDS)} or None, got {self.backend!r}"
            )

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process (collectives then talk to the others)."""
        return self.world_size > 1

    def peer_lost(self, exc: BaseException) -> PrunewiseError | None:
        """The error to report when `exc` is a collective failing because another process of
        the job stopped (gloo's "Connection closed by peer", NCCL's abort): that process's own
        error says why, so this one says so in one line. None for any other exception."""
        markers = ("closed by peer", "reset by peer", "remote worker", "NCCL communicator")
        if not (self.distributed and isinstance(exc, RuntimeError)):
            return None
        text = str(exc)
        if not any(m in text for m in markers):
            return None
        said = text.splitlines()[0].split("] ")[-1].split(". ")[0][:160]  # gloo's first sentence
        return PrunewiseError(
            f"rank {self.rank}: another process of the job stopped ({said}); its own error, in "
            "torchrun's output, says why; continue with --resume once it is fixed"
        )

    def check_ready(self) -> None:
        """Raise a clear error when several processes are declared but no group is initialized."""
        if self.distributed and not (tdist.is_available() and tdist.is_initialized()):
            raise PrunewiseError(
                f"world_size is {self.world_size} but torch.distributed is not initialized; "
                "get the context from init_distributed() under torchrun"
            )

    def device(self) -> torch.device:
        """The device collectives' tensors live on: CUDA local_rank for nccl, else CPU."""
        backend = self.backend or (tdist.get_backend() if self.distributed else None)
        if backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def barrier(self) -> None:
        """Wait until every rank got here; no-op when world_size == 1."""
        if self.distributed:
            self.check_ready()
            tdist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable objects); identity when world_size == 1."""
        if not self.distributed:
            return obj
        self.check_ready()
        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=self.device())
        return box[0]

    def all_reduce_sum(self, value: float) -> float:
        """The sum of `value` over all ranks (float64); `value` itself when world_size == 1."""
        if not self.distributed:
            return float(value)
        self.check_ready()
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device())
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return float(t)

    def broadcast_tensors_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` in place with rank 0's values; no-op when world_size == 1."""
        if not self.distributed:
            return
        self.check_ready()
        for t in tensors:
            tdist.broadcast(t, src=0)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise PrunewiseError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun"
        ) from exc


def init_distributed(device: str = "auto") -> DistContext:
    """The context from torchrun's environment (read now); init the process group if needed."""
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if rank is None and world is None and local is None:
        return DistContext()
    if rank is None or world is None:
        raise PrunewiseError(
            "RANK and WORLD_SIZE must both be set for distributed training (got "
            f"RANK={rank}, WORLD_SIZE={world}); launch with torchrun or unset them"
        )
    local = rank if local is None else local
    dev = pick_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and local >= torch.cuda.device_count():
        raise PrunewiseError(
            f"LOCAL_RANK {local} has no GPU ({torch.cuda.device_count()} visible); "
            "start at most one process per GPU (torchrun --nproc-per-node)"
        )
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)
    if not tdist.is_available():
        raise PrunewiseError("this torch build has no torch.distributed; run a single process")
    if backend == "nccl":
        torch.cuda.set_device(local)
    if tdist.is_initialized():
        if (tdist.get_rank(), tdist.get_world_size()) != (rank, world):
            raise PrunewiseError(
                f"torch.distributed is already initialized as rank {tdist.get_rank()} of "
                f"{tdist.get_world_size()}, but the environment says {rank} of {world}"
            )
        current = str(tdist.get_backend())
        return DistContext(rank, world, local, current if current in BACKENDS else None)
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PrunewiseError(
            f"{' and '.join(missing)} not set; launch with torchrun, which sets them"
        )
    extra = {"device_id": torch.device("cuda", local)} if backend == "nccl" else {}
    tdist.init_process_group(backend, rank=rank, world_size=world, **extra)
    return ctx


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group `init_distributed` made; no-op for a single process."""
    if ctx.backend is not None and tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    dist: DistContext | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A shuffling loader of this rank's shard; epoch e's order depends only on (seed, e).

    Raises PrunewiseError for fewer than 2 images or bad sizes.
    """
    if not (_is_int(batch_size) and batch_size >= 1):
        raise PrunewiseError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not (_is_int(num_workers) and num_workers >= 0):
        raise PrunewiseError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if not (_is_int(seed) and seed >= 0):
        raise PrunewiseError(f"seed must be an int >= 0, got {seed!r}")
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise PrunewiseError(
            f"the training set has {n} image{'' if n == 1 else 's'}; training needs at least 2 "
            "(BatchNorm normalises over a batch): check the data, --limit and --val-size"
        )
    ctx = dist or DistContext()
    sampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=False,
    )
