"""Train and evaluate a classifier: SGD with Nesterov momentum and a cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from prunewise.errors import PrunewiseError

__all__ = ["TrainConfig", "evaluate", "pick_device", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Paper A's training settings (SGD, momentum 0.9, Nesterov, wd 1e-4, cosine 0.01 -> 1e-5)."""

    epochs: int = 2
    lr: float = 0.01
    lr_min: float = 1e-5
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 0):
            raise PrunewiseError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not self.lr > 0 or not 0 <= self.lr_min <= self.lr:
            raise PrunewiseError(f"need lr > 0 and 0 <= lr_min <= lr, got {self.lr}, {self.lr_min}")
        if not 0 <= self.momentum < 1:
            raise PrunewiseError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise PrunewiseError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        pick_device(self.device)


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


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine decay from lr at step 0 to lr_min at step `total`."""
    if total <= 0:
        return lr
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(step, total) / total))


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | None = None) -> float:
    """Top-1 accuracy in percent."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x.to(device))
            correct += int((out.argmax(dim=1).cpu() == y).sum())
            total += int(y.shape[0])
    model.train(was_training)
    if total == 0:
        raise PrunewiseError("cannot evaluate on an empty dataset")
    return 100.0 * correct / total


def train(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    *,
    val_loader: DataLoader | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train `model` in place for `config.epochs`; returns one metrics dict per epoch."""
    device = pick_device(config.device)
    model.to(device)
    torch.manual_seed(config.seed)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    total = config.epochs * len(loader)
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(config.epochs):
        model.train()
        loss_sum = 0.0
        seen = 0
        bar = tqdm(
            loader,
            desc=f"{desc} {epoch + 1}/{config.epochs}",
            disable=not config.progress,
            leave=False,
            unit="batch",
        )
        for x, y in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, config.lr, config.lr_min)
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss) * y.shape[0]
            seen += y.shape[0]
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        metrics = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1)}
        if val_loader is not None:
            metrics["val_acc"] = evaluate(model, val_loader, device)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)
    return history
