"""The pruning methods bench/compare_peers.py compares, each brought to one FLOPs target.

Every method is a `Method`: a family (prunewise or Torch-Pruning), a pruning rule applied in
`steps` steps (one-shot = 1), an optional sparse-training regulariser, and the schedule that
spends the common training budget. Each pruning step lands on its FLOPs target by bisection:
on Torch-Pruning's channel ratio, or on a multiplier of paper A's eq. 4 ratios
(`prunewise.prune.decide(..., scale=)`), so every method ends within a tolerance of the same
FLOPs. One training loop (`fit`) serves every method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from prunewise.analysis import analyze, count_flops
from prunewise.data import make_loader
from prunewise.prune import RefinedConfig, apply_plan, decide
from prunewise.train import slimming_step
from prunewise.train.loop import cosine_lr

__all__ = ["METHODS", "Method", "Schedule", "classifier", "fit", "prune_to", "schedule"]

Regularizer = Callable[[nn.Module], None]


@dataclass(frozen=True)
class Method:
    """One compared method.

    kind: 'pw' (paper A's eq. 4 ratios, |gamma| ranking) or a Torch-Pruning criterion: 'l1'
    (MagnitudeImportance p=1), 'bn' (BNScaleImportance), 'slim' (BNScalePruner, its L1 on
    gamma as regulariser), 'group' (GroupNormPruner, group sparse learning with
    GroupMagnitudeImportance p=2). iterative: prune in --steps steps with fine-tuning between
    (else one step). sparse: spend --sparse-epochs on sparse training first (the regulariser
    of 'slim'/'group'; network slimming, --slimming, for 'pw').
    """

    key: str
    label: str
    family: str
    kind: str
    global_pruning: bool = False
    iterative: bool = False
    sparse: bool = False
    compensate: bool = False


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("tp-l1-uniform", "TP L1 uniform", "torch-pruning", "l1"),
        Method("tp-l1-global", "TP L1 global", "torch-pruning", "l1", global_pruning=True),
        Method("tp-bn-uniform", "TP BN-scale uniform", "torch-pruning", "bn"),
        Method("tp-bn-global", "TP BN-scale global", "torch-pruning", "bn", global_pruning=True),
        Method(
            "tp-slim",
            "TP BNScalePruner + reg, iterative",
            "torch-pruning",
            "slim",
            global_pruning=True,
            iterative=True,
            sparse=True,
        ),
        Method(
            "tp-group-sl",
            "TP GroupNormPruner + SL, iterative",
            "torch-pruning",
            "group",
            global_pruning=True,
            iterative=True,
            sparse=True,
        ),
        Method("pw-oneshot", "prunewise one-shot", "prunewise", "pw"),
        Method("pw-iter", "prunewise iterative", "prunewise", "pw", iterative=True),
        Method(
            "pw-iter-comp",
            "prunewise iterative + compensation",
            "prunewise",
            "pw",
            iterative=True,
            compensate=True,
        ),
        Method(
            "pw-slim-iter",
            "prunewise slimming + iterative",
            "prunewise",
            "pw",
            iterative=True,
            sparse=True,
        ),
    )
}


@dataclass(frozen=True)
class Schedule:
    """How a method spends the budget: sparse-training epochs, then per pruning step the
    fraction of the baseline FLOPs left after it and the fine-tune epochs that follow."""

    sparse_epochs: int
    flops_left: tuple[float, ...]
    epochs_after: tuple[int, ...]

    @property
    def total_epochs(self) -> int:
        """Training epochs in all (the budget)."""
        return self.sparse_epochs + sum(self.epochs_after)


def schedule(method: Method, target: float, budget: int, steps: int, sparse: int) -> Schedule:
    """The schedule of `method` for removing `target` of the FLOPs within `budget` epochs.

    Iterative methods take `steps` steps (fewer when the budget has fewer epochs left), each
    leaving the same fraction of what was there (the k-th of n leaves (1 - target)^(k/n) of the
    baseline's FLOPs); the epochs are split evenly, the remainder to the last step.
    """
    sparse_epochs = sparse if method.sparse else 0
    left = budget - sparse_epochs
    if left < 1:
        raise ValueError(f"a budget of {budget} epochs leaves none to fine-tune {method.key}")
    n = max(1, min(steps, left)) if method.iterative else 1
    epochs = [left // n] * n
    epochs[-1] += left - sum(epochs)
    flops_left = tuple((1 - target) ** ((k + 1) / n) for k in range(n))
    return Schedule(sparse_epochs, flops_left, tuple(epochs))


def classifier(model: nn.Module) -> nn.Module:
    """The last Conv2d/Linear of the model (its classifier: never pruned)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]


# ---------------------------------------------------------------- training


def fit(
    model: nn.Module,
    dataset: Any,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int,
    regularize: Regularizer | None = None,
    lr_min: float = 1e-5,
) -> float:
    """Train in place (SGD, Nesterov momentum 0.9, wd 1e-4, cosine lr -> lr_min, paper A's
    settings); `regularize(model)` runs after each backward pass. The same seed gives every
    method the same data order and augmentation draws. Returns the last epoch's mean loss."""
    if epochs < 1:
        return float("nan")
    torch.manual_seed(seed)
    loader = make_loader(dataset, batch_size, shuffle=True, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    total, step, loss_sum = epochs * len(loader), 0, 0.0
    model.train()
    for _ in range(epochs):
        loss_sum = 0.0
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, lr, lr_min)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if regularize is not None:
                regularize(model)
            opt.step()
            loss_sum += loss.item()
            step += 1
    model.eval()
    return loss_sum / len(loader)


# ---------------------------------------------------------------- Torch-Pruning


def _tp_pruner(
    model: nn.Module, method: Method, ratio: float, example: torch.Tensor, reg: float
) -> tp.pruner.MetaPruner:
    """The Torch-Pruning 1.6 pruner of `method` at channel ratio `ratio`."""
    common = {
        "pruning_ratio": ratio,
        "global_pruning": method.global_pruning,
        "ignored_layers": [classifier(model)],
    }
    if method.kind == "slim":
        return tp.pruner.BNScalePruner(
            model, example, importance=tp.importance.BNScaleImportance(), reg=reg, **common
        )
    if method.kind == "group":
        return tp.pruner.GroupNormPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            reg=reg,
            **common,
        )
    importance = (
        tp.importance.BNScaleImportance()
        if method.kind == "bn"
        else tp.importance.MagnitudeImportance(p=1)
    )
    return tp.pruner.MetaPruner(model, example, importance=importance, **common)


def tp_regularizer(
    model: nn.Module, method: Method, example: torch.Tensor, reg: float
) -> Regularizer:
    """Torch-Pruning's sparse-training step for 'slim' / 'group' (pruner.regularize)."""
    pruner = _tp_pruner(model, method, 0.5, example, reg)
    return lambda m: pruner.regularize(m)


def slimming_regularizer(strength: float) -> Regularizer:
    """prunewise's network slimming (TrainConfig.slimming): strength * sign(gamma)."""
    return lambda m: slimming_step(m, strength)


# ---------------------------------------------------------------- one pruning step


@dataclass(frozen=True)
class StepResult:
    """A pruned model and how the bisection got there."""

    model: nn.Module
    knob: float
    flops: int
    rel_error: float
    tries: int


def _bisect(
    make: Callable[[float], nn.Module], shape: tuple[int, ...], target: int, hi: float, tol: float
) -> StepResult:
    """Search the knob in (0, hi] (more knob, fewer FLOPs) for FLOPs within `tol` of `target`:
    a scan in 20 steps finds the first knob that reaches the target (Torch-Pruning's global
    pruning is not monotone near its maximum ratio: 0.95 can leave more FLOPs than 0.9), then
    bisection between it and the step before. The closest model tried when none is within."""
    best: StepResult | None = None
    tries = 0

    def attempt(knob: float) -> int:
        nonlocal best, tries
        tries += 1
        model = make(knob)
        flops = count_flops(model, shape)
        err = abs(flops / target - 1)
        if best is None or err < best.rel_error:
            best = StepResult(model, knob, flops, err, tries)
        return flops

    lo = 0.0
    for k in range(1, 21):
        knob = hi * k / 20
        if attempt(knob) <= target:
            hi = knob
            break
        lo = knob
    else:
        hi = lo
    for _ in range(30):
        if (best is not None and best.rel_error <= tol) or hi - lo < 1e-6:
            break
        mid = (lo + hi) / 2
        if attempt(mid) > target:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return StepResult(best.model, best.knob, best.flops, best.rel_error, tries)


def prune_to(
    model: nn.Module,
    method: Method,
    target_flops: int,
    *,
    images: torch.Tensor,
    refined: RefinedConfig,
    tol: float,
    max_ratio: float = 0.95,
) -> StepResult:
    """`model` (not changed) pruned by `method` until its FLOPs are within `tol` of
    `target_flops`. images: (N, C, H, W) for paper A's sparsity analysis and compensation."""
    shape = tuple(images.shape[1:])
    model = model.eval()
    if method.family == "prunewise":
        analysis = analyze(model, images)

        def make(scale: float) -> nn.Module:
            return apply_plan(model, decide(analysis, refined, scale=scale))  # a new model

        hi = 1.0
        while count_flops(make(hi), shape) > target_flops and hi < 64:
            hi *= 2
        found = _bisect(make, shape, target_flops, hi, tol)
        if method.compensate:
            plan = decide(analysis, refined, scale=found.knob)
            pruned = apply_plan(model, plan, compensate=images)
            found = StepResult(pruned, found.knob, found.flops, found.rel_error, found.tries)
        return found
    example = images[:1]

    def make_tp(ratio: float) -> nn.Module:
        copy_ = copy.deepcopy(model)
        if ratio > 0:
            _tp_pruner(copy_, method, ratio, example, 0.0).step()
        return copy_

    return _bisect(make_tp, shape, target_flops, max_ratio, tol)
