"""Train and evaluate a classifier: SGD with Nesterov momentum and a cosine schedule.

`train` is resumable epoch by epoch: epoch e seeds torch's RNG from (seed, e, rank), sets the
sampler's epoch and takes its learning rates from the global step, so continuing from a saved
`TrainState` repeats exactly what an uninterrupted run does. Under torchrun it trains through
`DistributedDataParallel`, reduces the metrics over the ranks and calls `on_epoch` on rank 0 only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from prunewise.errors import PrunewiseError, first_line
from prunewise.io import load_state
from prunewise.progress import progress_bar
from prunewise.records import epoch_record
from prunewise.settings import MAX_SEED, Settings, setting
from prunewise.train.distill import DistillConfig, distillation_loss
from prunewise.train.metrics import main_output
from prunewise.train.runtime import DistContext, pick_device
from prunewise.train.state import TrainState

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "cosine_lr",
    "epoch_seed",
    "evaluate",
    "pick_device",
    "slimming_step",
    "train",
]

POSTFIX_EVERY = 10
"""Batches between updates of the progress bar's loss (each update waits for the device)."""


DEVICE_PATTERN = r"auto|cpu|mps|cuda(:[0-9]+)?"
DEVICE_TEXT = "auto (CUDA when available), cpu, mps, cuda or cuda:N"


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Paper A's training settings (SGD, momentum 0.9, Nesterov, wd 1e-4, cosine 0.01 -> 1e-5).

    `device` is checked for its form here; whether it exists is checked when training starts
    (`pick_device`), so a config can be read and resumed on another machine.
    """

    section: ClassVar[str] = "train"

    epochs: int = setting(2, "training epochs (paper A: 100)", low=0, high=100_000, flag="--epochs")
    lr: float = setting(0.01, "initial learning rate", low=0, high=10, low_open=True, flag="--lr")
    lr_min: float = setting(0.00001, "final learning rate of the cosine", low=0, flag="--lr-min")
    momentum: float = setting(0.9, "SGD momentum", low=0, high=1, high_open=True, flag="--momentum")
    nesterov: bool = setting(True, "plain momentum instead of Nesterov's", flag="--no-nesterov")
    weight_decay: float = setting(0.0001, "SGD weight decay", low=0, high=1, flag="--weight-decay")
    slimming: float = setting(
        0.0,
        "network slimming (Liu et al. 2017): L1 penalty on every BatchNorm gamma, its "
        "subgradient lambda * sign(gamma) added to the gradient; 0 = off (paper A adds none)",
        low=0,
        high=1,
        flag="--slimming",
        metavar="LAMBDA",
    )
    seed: int = setting(
        0, "seed of splits, sampling and training", low=0, high=MAX_SEED, flag="--seed"
    )
    device: str = setting(
        "auto",
        "where to train",
        pattern=DEVICE_PATTERN,
        pattern_text=DEVICE_TEXT,
        flag="--device",
    )
    progress: bool = setting(
        True, "no progress bars (they are drawn on a terminal only)", flag="--no-progress"
    )

    def check(self) -> None:
        """The final learning rate may not exceed the first."""
        if self.lr_min > self.lr:
            self.fail("lr_min", f"<= lr ({self.lr:g})", self.lr_min)


def slimming_step(model: nn.Module, strength: float) -> None:
    """Add the subgradient of strength * sum |gamma| to every BatchNorm scale's gradient
    (network slimming, Liu et al. 2017, eq. 1), after the backward pass (and after DDP's
    averaging: every rank adds the same term)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.weight is not None and m.weight.grad is not None:
                m.weight.grad.add_(torch.sign(m.weight), alpha=strength)


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine decay from lr at step 0 to lr_min at step `total`."""
    if total <= 0:
        return lr
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(step, total) / total))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of torch's RNG for `epoch` on `rank` (dropout, augmentation, worker seeds)."""
    state = np.random.SeedSequence([seed, 0x7472, epoch, rank]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | None = None) -> float:
    """Top-1 accuracy in percent."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            out = main_output(model(x.to(device)))
            correct += int((out.argmax(dim=1).cpu() == y).sum())
            total += int(y.shape[0])
    model.train(was_training)
    if total == 0:
        raise PrunewiseError("cannot evaluate on an empty dataset")
    return 100.0 * correct / total


def _check(
    model: nn.Module,
    loader: DataLoader,
    val_loader: DataLoader | None,
    teacher: nn.Module | None,
    distill: DistillConfig | None,
    dist: DistContext,
) -> None:
    """Raise on inputs that cannot train, before any work is done."""
    if not any(p.requires_grad for p in model.parameters()):
        raise PrunewiseError("the model has no trainable parameters")
    if len(loader) == 0:
        raise PrunewiseError("the training loader yields no batch; check the data and batch size")
    size = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    if size is not None and size < 2:
        raise PrunewiseError(
            f"the training set has {size} image{'' if size == 1 else 's'}; training needs at "
            "least 2 (BatchNorm normalises over a batch): check the data, --limit and --val-size"
        )
    if val_loader is not None and len(val_loader) == 0:
        raise PrunewiseError("the validation loader yields no batch; check val_size")
    if distill is not None and teacher is None:
        raise PrunewiseError("distill settings given without a teacher; pass teacher=<model>")
    if distill is not None and not isinstance(distill, DistillConfig):
        raise PrunewiseError(f"distill must be a DistillConfig, got {type(distill).__name__}")
    if teacher is not None and teacher is model:
        raise PrunewiseError("the teacher is the model being trained; pass a separate copy")
    dist.check_ready()
    sampler = getattr(loader, "sampler", None)
    if dist.distributed and not (
        isinstance(sampler, DistributedSampler)
        and (sampler.num_replicas, sampler.rank) == (dist.world_size, dist.rank)
    ):
        raise PrunewiseError(
            f"rank {dist.rank} of {dist.world_size} needs its own shard of the training set; "
            "build the loader with make_train_loader(..., dist=ctx)"
        )


def _restore(model: nn.Module, opt: torch.optim.Optimizer, resume: TrainState) -> None:
    try:
        load_state(model, resume.model_state)
    except RuntimeError as exc:
        raise PrunewiseError(
            f"the saved training state does not fit this model ({first_line(exc)}); resume "
            "with the architecture it was saved from"
        ) from exc
    try:
        opt.load_state_dict(resume.optimizer_state)
    except (ValueError, KeyError) as exc:
        raise PrunewiseError(
            f"the saved optimizer state does not fit this model ({exc}); resume with the "
            "architecture it was saved from"
        ) from exc


def _wrap(model: nn.Module, dist: DistContext, device: torch.device) -> nn.Module:
    """`model` itself, or a DistributedDataParallel around it when there are several ranks."""
    if not dist.distributed:
        return model
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def _batch_loss(
    net: nn.Module,
    teacher: nn.Module | None,
    distill: DistillConfig | None,
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    out = main_output(net(x), training=True)
    if teacher is None or distill is None:
        return F.cross_entropy(out, y)
    with torch.no_grad():
        target = main_output(teacher(x))
    if target.shape != out.shape:
        raise PrunewiseError(
            f"the teacher gives {tuple(target.shape)[1:]} outputs per image, the student "
            f"{tuple(out.shape)[1:]}; use a teacher trained on the same classes"
        )
    return distillation_loss(out, target, y, distill)


def _run_epoch(
    epoch: int,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    loader: DataLoader,
    config: TrainConfig,
    device: torch.device,
    dist: DistContext,
    teacher: nn.Module | None,
    distill: DistillConfig | None,
    desc: str,
) -> float:
    """One pass over `loader`; returns the sample-mean loss over all ranks."""
    torch.manual_seed(epoch_seed(config.seed, epoch, dist.rank))
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    steps = len(loader)
    total = config.epochs * steps
    net.train()
    single_batch_breaks = any(isinstance(m, _BatchNorm) for m in net.modules())
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    bar = progress_bar(
        loader,
        desc=f"{desc} {epoch + 1}/{config.epochs}",
        show=config.progress and dist.is_main,
        leave=False,
        unit="batch",
    )
    for i, (x, y) in enumerate(bar):
        if single_batch_breaks and y.shape[0] < 2:
            continue  # BatchNorm cannot train on one image (a last batch of one, say)
        lr = cosine_lr(epoch * steps + i, total, config.lr, config.lr_min)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = x.to(device), y.to(device)
        loss = _batch_loss(net, teacher, distill, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.slimming:
            slimming_step(net, config.slimming)
        opt.step()
        loss_sum += loss.detach().double() * y.shape[0]
        seen += int(y.shape[0])
        if not bar.disable and (i % POSTFIX_EVERY == 0 or i == steps - 1):
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}")
    bar.close()
    return dist.all_reduce_sum(float(loss_sum)) / max(dist.all_reduce_sum(seen), 1.0)


class TrainingDiverged(PrunewiseError):
    """The loss became NaN or infinite: the weights are no longer usable."""


def train(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    *,
    val_loader: DataLoader | None = None,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    resume: TrainState | None = None,
    on_epoch: Callable[[TrainState], None] | None = None,
    desc: str = "train",
    dist: DistContext | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place for `config.epochs` (continuing `resume`); returns the history."""
    dist = dist or DistContext()
    config = TrainConfig.given(config)
    distill = None if distill is None else DistillConfig.given(distill)
    _check(model, loader, val_loader, teacher, distill, dist)
    if teacher is not None and distill is None:
        distill = DistillConfig()
    device = pick_device(config.device)
    model.to(device)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    history: list[dict[str, float]] = []
    if resume is not None:
        _restore(model, opt, resume)
        history = [dict(m) for m in resume.history]
    start = len(history)
    if start >= config.epochs:
        return history
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(device).eval()
    net = _wrap(model, dist, device)
    steps = len(loader)
    total = config.epochs * steps
    try:
        for epoch in range(start, config.epochs):
            t0 = time.perf_counter()
            loss = _run_epoch(epoch, net, opt, loader, config, device, dist, teacher, distill, desc)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"{desc}: training diverged in epoch {epoch + 1} (mean loss {loss}); the "
                    f"weights are no longer usable: lower the learning rate (now {config.lr:g})"
                )
            dist.broadcast_tensors_(list(model.buffers()))
            val = None
            if val_loader is not None:
                val = dist.broadcast_object(evaluate(model, val_loader, device))
            lr = cosine_lr((epoch + 1) * steps, total, config.lr, config.lr_min)
            seconds = dist.broadcast_object(time.perf_counter() - t0)
            history.append(epoch_record(epoch + 1, loss, lr, val, seconds))
            if on_epoch is not None and dist.is_main:
                on_epoch(TrainState.capture(epoch + 1, model, opt, history))
            dist.barrier()
    finally:
        if teacher is not None:
            teacher.train(teacher_was_training)
    return history
