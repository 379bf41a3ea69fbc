"""What training needs to continue after an epoch: weights, optimizer state and history."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunewise.errors import PrunewiseError, first_line
from prunewise.io import atomic_write_bytes
from prunewise.torchfile import torch_load

__all__ = ["TRAIN_STATE_FORMAT", "TrainState", "to_cpu"]

TRAIN_STATE_FORMAT = "prunewise-train-state/1"
"""The `format` entry of a saved `TrainState` (tells it from other torch files)."""


def to_cpu(obj: Any) -> Any:
    """A deep copy of `obj` whose tensors are detached CPU copies."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


@dataclass
class TrainState:
    """Training after `epochs_done` finished epochs (CPU tensors), enough to resume exactly."""

    epochs_done: int
    model_state: dict
    optimizer_state: dict
    history: list[dict]

    def __post_init__(self) -> None:
        n = self.epochs_done
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise PrunewiseError(f"TrainState.epochs_done must be an int >= 0, got {n!r}")
        if not isinstance(self.model_state, dict) or not isinstance(self.optimizer_state, dict):
            raise PrunewiseError("TrainState needs model and optimizer state dicts")
        if not isinstance(self.history, list) or len(self.history) != n:
            raise PrunewiseError(
                f"TrainState.history needs one metrics dict per finished epoch ({n}), "
                f"got {len(self.history) if isinstance(self.history, list) else self.history!r}"
            )

    @classmethod
    def capture(
        cls,
        epochs_done: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        history: list[dict],
    ) -> TrainState:
        """A snapshot (CPU copies) of `model`, `optimizer` and `history` now."""
        return cls(
            epochs_done=epochs_done,
            model_state=to_cpu(model.state_dict()),
            optimizer_state=to_cpu(optimizer.state_dict()),
            history=copy.deepcopy(history),
        )

    def save(self, path: str | Path) -> None:
        """Write to `path` atomically (temporary file in the same folder, then a rename)."""
        payload = {
            "format": TRAIN_STATE_FORMAT,
            "epochs_done": self.epochs_done,
            "model_state": self.model_state,
            "optimizer_state": self.optimizer_state,
            "history": self.history,
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> TrainState:
        """Read a state written by `save`, with a clear error for missing or foreign files."""
        path = Path(path)
        if not path.is_file():
            raise PrunewiseError(
                f"training state {path} does not exist; check the path, or train from scratch"
            )
        try:
            payload = torch_load(path)
        except PrunewiseError:
            raise
        except Exception as exc:
            first = first_line(exc)
            raise PrunewiseError(
                f"cannot read training state {path} ({first}); the file is corrupt or not "
                "written by prunewise: delete it to restart this training from scratch"
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != TRAIN_STATE_FORMAT:
            raise PrunewiseError(
                f"{path} is not a prunewise training state (no format {TRAIN_STATE_FORMAT!r}); "
                "pass a file written by TrainState.save"
            )
        try:
            return cls(
                epochs_done=payload["epochs_done"],
                model_state=payload["model_state"],
                optimizer_state=payload["optimizer_state"],
                history=payload["history"],
            )
        except KeyError as exc:
            raise PrunewiseError(
                f"training state {path} lacks {exc.args[0]!r}; delete it to restart training"
            ) from exc
        except PrunewiseError as exc:
            raise PrunewiseError(f"training state {path} is inconsistent: {exc}") from exc
