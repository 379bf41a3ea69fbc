"""Run by test_ddp.py under torchrun: train a tiny CNN on CPU ranks with gloo, save what happened.

Usage: torchrun --nproc-per-node 2 ddp_worker.py OUT_DIR (writes OUT_DIR/rank<R>.pt).
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torch
from torch import nn

from prunewise.data import ImageView, TensorImages, make_loader
from prunewise.train import (
    TrainConfig,
    TrainState,
    init_distributed,
    make_train_loader,
    shutdown_distributed,
    train,
)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _images(n: int, seed: int, augment: bool) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = x.float().mean(dim=(2, 3)).argmax(dim=1)
    return TensorImages(x, y, ImageView(3, 8, 0, (0.5,) * 3, (0.25,) * 3, augment))


class _Terminal(io.StringIO):
    """Captured stderr that says it is a terminal: progress bars draw only on one."""

    def isatty(self) -> bool:
        return True


def main(out: Path) -> None:
    """Train on this rank and write rank<R>.pt with weights, history and observations."""
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        again = init_distributed("cpu")
        loader = make_train_loader(_images(256, 1, False), 16, seed=5, dist=ctx)
        val_loader = make_loader(_images(48, 2, False), 16, shuffle=False)
        config = TrainConfig(epochs=8, lr=0.2, lr_min=1e-3, seed=3, device="cpu", progress=True)
        model = _model(seed=100 + ctx.rank)  # different per rank: DDP starts all from rank 0's
        calls: list[int] = []
        state_path = out / "state.pt"

        def on_epoch(state: TrainState) -> None:
            calls.append(state.epochs_done)
            state.save(state_path)

        err = _Terminal()
        with contextlib.redirect_stderr(err):
            history = train(
                model, loader, config, val_loader=val_loader, on_epoch=on_epoch, dist=ctx
            )
        saved = TrainState.load(state_path)  # present on every rank: the barrier waited for it
        result = {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "idempotent": again == ctx,
            "model_type": type(model).__name__,
            "history": history,
            "calls": calls,
            "progress": err.getvalue(),
            "shard": list(loader.sampler),
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "saved_epochs": saved.epochs_done,
            "saved_weights": saved.model_state,
        }
        torch.save(result, out / f"rank{ctx.rank}.pt")
    finally:
        shutdown_distributed(ctx)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
