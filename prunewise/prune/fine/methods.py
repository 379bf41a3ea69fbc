"""Fine-grained pruning methods behind one verb: magnitude, reversed, peak, balanced and N:M.

Training-agnostic: the caller passes `evaluate(model) -> accuracy in percent` and
`finetune(model, label)`. Masks stay attached (torch.nn.utils.prune) while fine-tuning, so
pruned weights stay zero and never come back; they are made permanent at the end.

Rules:
- Layers: every Conv1d, Conv2d and Linear (`prunable_weights`) not named in `skip`, in module
  order. Convolutions use `sparsity`; Linear layers use `fc_sparsity` when it is set.
- A layer that already carries a mask is pruned further: its pruned positions go first, then
  the smallest |w| of the rest, so it ends with exactly round(ratio·numel) zeros (or keeps its
  mask when that already has more).
- Balanced / N:M: a Linear weight (O, I) is always grouped along its inputs ("flat", which for a
  2-D weight is the same as "in"); `axis` applies to convolutions.
- Peak of a layer: the largest scan ratio, not below the layer's current ratio, whose accuracy
  with that layer alone pruned (no fine-tuning) is >= reference − delta, where the reference is
  the accuracy of the model before the scan; if none passes, the current ratio.
- Reversed: one stage per layer, Linear layers from the last to the first, then convolutions
  from the last to the first. Its scans (peak=True) are recorded with round = stage number.
- Steps, for resuming: the one-shot methods have one step, reversed one per layer, peak one per
  round. After each step `sparsify` hands a `SparsifyState` to `checkpoint`; given back as
  `resume`, the call continues after that step (an interrupted step is done again).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunewise.errors import first_line, listing
from prunewise.io import load_state
from prunewise.prune.fine.attach import attach_masks, make_permanent, maskable
from prunewise.prune.fine.config import (
    Evaluate,
    Finetune,
    Log,
    ScanRecord,
    SparsifyConfig,
    SparsifyResult,
    StageRecord,
    _fail,
    _is_number,
    overall_sparsity,
)
from prunewise.prune.fine.masks import (
    balanced_mask,
    check_ratio,
    global_magnitude_masks,
    magnitude_mask,
    mask_sparsity,
    nm_mask,
    round_count,
)

__all__ = [
    "Checkpoint",
    "SparsifyState",
    "dense_weights",
    "pick_layers",
    "scan_layer",
    "sparsify",
]


def dense_weights(model: nn.Module) -> dict[str, int]:
    """Weight tensors no mask can sit on, name -> elements: every parameter of two or more
    dimensions that is not the weight of a `maskable` layer (a layer type sparsify does not
    mask, such as ConvTranspose2d or Conv3d; a forward that computes another weight from the
    stored one, such as weight standardisation; a weight a forward passes to F.conv2d itself,
    as a checkpoint stores such layers). A sparsify job leaves them dense."""
    covered = {f"{n}.weight" for n, m in model.named_modules() if maskable(m)}
    covered |= {f"{n}.weight_orig" for n, m in model.named_modules() if maskable(m)}
    return {n: p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and n not in covered}


def pick_layers(model: nn.Module, skip: Sequence[str]) -> dict[str, nn.Module]:
    """Name -> module of the layers a sparsify job masks: the maskable ones not in `skip`.
    Raises PrunewiseError when `skip` names a layer that is not one, or leaves none."""
    named = {n: m for n, m in model.named_modules() if maskable(m)}
    if not named:
        _fail(
            "the model has no layer whose weight masks can hold (Conv1d, Conv2d, Linear, used "
            "as they are; a subclass that computes its weight in forward is left dense)"
        )
    unknown = [s for s in skip if s not in named]
    if unknown:
        _fail(f"skip names no prunable layer: {unknown}; prunable layers: {list(named)}")
    layers = {n: m for n, m in named.items() if n not in skip}
    if not layers:
        _fail("every prunable layer is in skip; nothing to prune")
    return layers


def _effective(module: nn.Module) -> Tensor:
    """The weight the module computes with (weight_orig · mask when a mask is attached)."""
    if hasattr(module, "weight_orig"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def _keep(module: nn.Module) -> Tensor:
    """The attached bool keep-mask, or all True."""
    mask = getattr(module, "weight_mask", None)
    return torch.ones_like(module.weight, dtype=torch.bool) if mask is None else mask.bool()


def _deeper(module: nn.Module, ratio: float) -> Tensor:
    """Keep-mask with round(ratio·numel) zeros: pruned positions first, then the smallest |w|."""
    weight, keep = _effective(module), _keep(module)
    if bool(keep.all()):
        return magnitude_mask(weight, ratio)
    n = weight.numel()
    extra = round_count(ratio * n) - (n - int(keep.count_nonzero()))
    out, alive = keep.clone().reshape(-1), keep.reshape(-1)
    scores = weight.reshape(-1)[alive]
    if 0 < extra < scores.numel():
        out[alive] = magnitude_mask(scores, extra / scores.numel())
    elif extra > 0:
        out[:] = False
    return out.reshape(weight.shape)


@contextmanager
def _trial(module: nn.Module, keep: Tensor) -> Iterator[None]:
    """Prune `module` to `keep` for the duration, then restore its tensors bit for bit."""
    if hasattr(module, "weight_mask"):
        saved_mask, saved_weight = module.weight_mask.clone(), module.weight
        module.weight_mask.copy_(keep)
        module.weight = module.weight_orig * module.weight_mask
        try:
            yield
        finally:
            module.weight_mask.copy_(saved_mask)
            module.weight = saved_weight
    else:
        saved = module.weight.detach().clone()
        with torch.no_grad():
            module.weight.mul_(keep)
        try:
            yield
        finally:
            with torch.no_grad():
                module.weight.copy_(saved)


def _accuracy(evaluate: Evaluate, model: nn.Module) -> float:
    """Call `evaluate` and check it returned a finite number."""
    value = evaluate(model)
    if not _is_number(value) or not math.isfinite(value):
        _fail(f"evaluate must return an accuracy in percent as a finite number, got {value!r}")
    return float(value)


def scan_layer(
    model: nn.Module, layer: str, ratios: Sequence[float], evaluate: Evaluate
) -> list[tuple[float, float]]:
    """(ratio, accuracy) with `layer` alone pruned further to each ratio; the model is restored."""
    module = dict(model.named_modules()).get(layer)
    if not maskable(module):
        _fail(f"{layer!r} is not a Conv1d, Conv2d or Linear layer of the model")
    points = []
    for ratio in ratios:
        with _trial(module, _deeper(module, check_ratio(ratio))):
            points.append((float(ratio), _accuracy(evaluate, model)))
    return points


@dataclass(frozen=True, eq=False)
class SparsifyState:
    """Where a `sparsify` call stands after a finished step: enough to continue it elsewhere.

    `weights` is the model's state dict with its masks attached (`<layer>.weight_orig` and
    `<layer>.weight_mask`); `to_payload()` holds only tensors and plain values, so the saved file
    loads with `torch.load(weights_only=True)`.
    """

    method: str
    step: int
    finished: bool
    weights: dict[str, Tensor]
    masks: dict[str, Tensor]
    ratios: dict[str, float]
    acc: float | None
    stages: tuple[StageRecord, ...]
    scans: tuple[ScanRecord, ...]

    def to_payload(self) -> dict[str, Any]:
        """Tensors and plain values only (the records as dicts)."""
        return {
            "method": self.method,
            "step": self.step,
            "finished": self.finished,
            "weights": self.weights,
            "masks": self.masks,
            "ratios": dict(self.ratios),
            "acc": self.acc,
            "stages": [r.to_dict() for r in self.stages],
            "scans": [r.to_dict() for r in self.scans],
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SparsifyState:
        """Inverse of `to_payload`; a payload that is not one raises PrunewiseError."""
        try:
            stages = tuple(
                StageRecord(**{**r, "layers": tuple(r["layers"])}) for r in payload["stages"]
            )
            scans = tuple(
                ScanRecord(**{**r, "points": tuple(tuple(p) for p in r["points"])})
                for r in payload["scans"]
            )
            return cls(
                str(payload["method"]),
                int(payload["step"]),
                bool(payload["finished"]),
                dict(payload["weights"]),
                {n: m.bool() for n, m in payload["masks"].items()},
                {n: float(r) for n, r in payload["ratios"].items()},
                None if payload["acc"] is None else float(payload["acc"]),
                stages,
                scans,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            _fail(f"not a sparsify state ({type(exc).__name__}: {exc}); start the job afresh")


Checkpoint = Callable[[SparsifyState], None]


@dataclass
class _Run:
    """The state of one `sparsify` call: working model, callbacks, accuracy, records."""

    model: nn.Module
    config: SparsifyConfig
    evaluate: Evaluate
    finetune: Finetune
    log: Log
    checkpoint: Checkpoint | None = None
    acc: float | None = None
    stages: list[StageRecord] = field(default_factory=list)
    scans: list[ScanRecord] = field(default_factory=list)
    step: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        """Pick the layers (prunable, not skipped) and their current ratios."""
        self.layers = pick_layers(self.model, self.config.skip)
        self.ratios = {n: mask_sparsity(_keep(m)) for n, m in self.layers.items()}

    def restore(self, state: SparsifyState) -> None:
        """Continue from `state`: its masks and weights, ratios, accuracy, records and step."""
        if state.method != self.config.method:
            _fail(
                f"the saved state is of method {state.method!r}, not {self.config.method!r}; "
                "resume with the options the job was started with"
            )
        unknown = [n for n in state.masks if n not in self.layers]
        if unknown or set(state.ratios) != set(self.layers):
            which = unknown or sorted(set(state.ratios) ^ set(self.layers))
            _fail(
                f"the saved state does not fit this model and skip list (layers {which}); "
                "resume with the checkpoint and options the job was started with"
            )
        attach_masks(self.model, state.masks)
        try:
            load_state(self.model, state.weights)
        except RuntimeError as exc:
            _fail(
                f"the saved state does not fit this model ({first_line(exc)}); start the job afresh"
            )
        self.ratios, self.acc = dict(state.ratios), state.acc
        self.stages, self.scans = list(state.stages), list(state.scans)
        self.step, self.finished = state.step, state.finished

    def save(self, step: int, finished: bool = False) -> None:
        """Record that `step` is done and hand the state to the checkpoint callback."""
        self.step, self.finished = step, finished
        if self.checkpoint is None:
            return
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        masks = {n: _keep(m).clone() for n, m in self.layers.items() if hasattr(m, "weight_mask")}
        state = SparsifyState(
            self.config.method,
            step,
            finished,
            weights,
            masks,
            dict(self.ratios),
            self.acc,
            tuple(self.stages),
            tuple(self.scans),
        )
        self.checkpoint(state)

    def current(self) -> float:
        """Accuracy of the current model (evaluated once, then carried from stage to stage)."""
        if self.acc is None:
            self.acc = _accuracy(self.evaluate, self.model)
        return self.acc

    def target(self, name: str) -> float:
        """The configured ratio of a layer."""
        fc, linear = self.config.fc_sparsity, isinstance(self.layers[name], nn.Linear)
        return fc if fc is not None and linear else self.config.sparsity

    def axis(self, name: str) -> str:
        """Group axis of a layer: Linear along its inputs, convolutions as configured."""
        return "flat" if isinstance(self.layers[name], nn.Linear) else self.config.axis

    def masks(self) -> dict[str, Tensor]:
        """Current keep-mask of every layer."""
        return {n: _keep(m) for n, m in self.layers.items()}

    def stage(self, label: str, masks: dict[str, Tensor]) -> None:
        """Attach `masks`, evaluate, fine-tune, evaluate, record."""
        before = self.current()
        attach_masks(self.model, masks)
        pruned = _accuracy(self.evaluate, self.model)
        self.finetune(self.model, label)
        lost = [n for n in masks if not hasattr(self.layers[n], "weight_mask")]
        if lost:
            _fail(f"finetune removed the masks of {lost}; fine-tune in place, keep masks attached")
        self.acc = _accuracy(self.evaluate, self.model)
        sparsity = {n: mask_sparsity(_keep(self.layers[n])) for n in masks}
        overall = overall_sparsity(self.masks())
        self.stages.append(
            StageRecord(label, tuple(masks), sparsity, overall, before, pruned, self.acc)
        )
        self.log(
            f"{label}: {len(masks)} layer(s), overall sparsity {overall:.3f} "
            f"(acc {before:.1f} -> {pruned:.1f} pruned -> {self.acc:.1f} fine-tuned)"
        )
        dense = [n for n in masks if sparsity[n] == 0]
        if dense and self.config.method in ("balanced", "nm"):  # a depthwise or 1-channel layer
            self.log(
                f"{label}: {len(dense)} layer(s) kept dense, their groups too short along the "
                f"axis to lose a weight: {listing(dense, 6)}"
            )

    def scan(self, round_: int, name: str, prefix: str) -> float:
        """Scan one layer on the current model, record it, and return its peak ratio."""
        reference = self.current()
        start = self.ratios[name]
        ratios = [r for r in self.config.scan_ratios if r >= start]
        points = scan_layer(self.model, name, ratios, self.evaluate)
        passing = [r for r, acc in points if acc >= reference - self.config.delta]
        peak = max(passing, default=start)
        self.scans.append(ScanRecord(round_, name, reference, tuple(points), peak))
        at_peak = dict(points).get(peak, reference)
        self.log(f"{prefix}: {name} peak {peak:.2f} (acc {reference:.1f} -> {at_peak:.1f})")
        return peak

    def one_shot(self) -> None:
        """Magnitude (per layer or global), balanced or N:M masks for all layers, one stage."""
        if self.finished:
            return
        c = self.config
        if c.method == "magnitude" and c.scope == "global":
            weights = {n: _effective(m) for n, m in self.layers.items()}
            found = global_magnitude_masks(weights, c.sparsity)
            masks = {n: mask & _keep(self.layers[n]) for n, mask in found.items()}
        elif c.method == "magnitude":
            masks = {n: _deeper(m, self.target(n)) for n, m in self.layers.items()}
        elif c.method == "balanced":
            masks = {
                n: balanced_mask(_effective(m), self.target(n), c.group, self.axis(n))
                for n, m in self.layers.items()
            }
        else:
            masks = {
                n: nm_mask(_effective(m), c.n, c.m, self.axis(n)) for n, m in self.layers.items()
            }
        self.stage(c.method, masks)
        self.save(1, finished=True)

    def reversed(self) -> None:
        """One stage per layer: Linear layers last to first, then convolutions last to first."""
        linear = [n for n, m in self.layers.items() if isinstance(m, nn.Linear)]
        conv = [n for n in self.layers if n not in linear]
        order = [*linear[::-1], *conv[::-1]]
        for number, name in enumerate(order, start=1):
            if number <= self.step:
                continue
            label = f"reversed {name}"
            ratio = self.scan(number, name, label) if self.config.peak else self.target(name)
            self.stage(label, {name: _deeper(self.layers[name], ratio)})
            self.ratios[name] = max(ratio, self.ratios[name])
            self.save(number, finished=number == len(order))

    def peak(self) -> None:
        """Scan every layer, prune all to their peaks, fine-tune; repeat while a peak grows."""
        for round_ in range(self.step + 1, self.config.max_rounds + 1):
            if self.finished:
                return
            label = f"peak round {round_}"
            peaks = {n: self.scan(round_, n, label) for n in self.layers}
            grown = {n: p for n, p in peaks.items() if p > self.ratios[n]}
            if grown:
                self.stage(label, {n: _deeper(self.layers[n], p) for n, p in grown.items()})
                self.ratios.update(grown)
            self.save(round_, finished=not grown or round_ == self.config.max_rounds)


def sparsify(
    model: nn.Module,
    config: SparsifyConfig,
    evaluate: Evaluate,
    finetune: Finetune,
    *,
    log: Log | None = None,
    checkpoint: Checkpoint | None = None,
    resume: SparsifyState | None = None,
) -> SparsifyResult:
    """Prune a deep copy of `model` by `config`; fine-tuning and evaluation are the callbacks'.

    `checkpoint` receives the state after each step; `resume` (a state it received, for the
    same model and config) continues from there.
    """
    if not isinstance(config, SparsifyConfig):
        _fail(f"sparsify needs a SparsifyConfig, got {type(config).__name__}")
    run = _Run(
        copy.deepcopy(model), config, evaluate, finetune, log or (lambda _line: None), checkpoint
    )
    if resume is not None:
        run.restore(resume)
        run.log(f"resumed after step {run.step} ({len(run.stages)} stage(s) done)")
    elif dense := dense_weights(run.model):
        every = sum(p.numel() for p in run.model.parameters() if p.dim() >= 2)
        share = sum(dense.values()) / every
        run.log(
            f"{len(dense)} weight tensor(s) stay dense, {share:.0%} of the weights (sparsity "
            f"figures count the masked layers only): {listing(list(dense), 6)}; masks sit on "
            "Conv1d, Conv2d and Linear layers that convolve with their stored weight: register "
            "another layer type to mask it (docs/sparsify.md)"
        )
    if config.method == "reversed":
        run.reversed()
    elif config.method == "peak":
        run.peak()
    else:
        run.one_shot()
    masks = {n: k.detach().clone() for n, k in run.masks().items()}
    make_permanent(run.model)
    return SparsifyResult(run.model, masks, tuple(run.stages), tuple(run.scans))
