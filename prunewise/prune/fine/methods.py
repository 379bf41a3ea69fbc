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
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from prunewise.errors import PrunewiseError
from prunewise.prune.fine.attach import MASKABLE, attach_masks, make_permanent
from prunewise.prune.fine.groups import AXES
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
    "METHODS",
    "Evaluate",
    "Finetune",
    "ScanRecord",
    "SparsifyConfig",
    "SparsifyResult",
    "StageRecord",
    "layer_sparsity",
    "overall_sparsity",
    "scan_layer",
    "sparsify",
]

METHODS: tuple[str, ...] = ("magnitude", "reversed", "peak", "balanced", "nm")
SCOPES: tuple[str, ...] = ("layer", "global")

Evaluate = Callable[[nn.Module], float]
Finetune = Callable[[nn.Module, str], None]
Log = Callable[[str], None]


def _is_number(x: object) -> bool:
    """A real number (int or float, not bool)."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_int(x: object) -> bool:
    """An int, not bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def _fail(message: str) -> NoReturn:
    """Raise PrunewiseError(message)."""
    raise PrunewiseError(message)


def _ratio(name: str, value: object, optional: bool = False) -> None:
    """Raise unless `value` is a ratio in [0, 1) (or None when optional)."""
    if optional and value is None:
        return
    if not _is_number(value) or not 0 <= value < 1:  # type: ignore[operator]
        _fail(f"{name} must be in [0, 1){' or None' if optional else ''}, got {value!r}")


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively through dicts and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


class _Record:
    """Mixin: `to_dict()` of a dataclass, JSON-ready (tuples become lists)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return _plain(asdict(self))  # type: ignore[call-overload]


def _as_tuple(name: str, value: object) -> tuple[Any, ...]:
    """A list or tuple option as a tuple; raise for anything else (a str too)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        _fail(f"{name} must be a tuple, got {value!r}")
    return tuple(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SparsifyConfig(_Record):
    """What `sparsify` does; every option is checked when the config is made."""

    method: str = "magnitude"
    sparsity: float = 0.8
    fc_sparsity: float | None = None
    scope: str = "layer"
    group: int = 16
    axis: str = "in"
    n: int = 2
    m: int = 4
    peak: bool = False
    delta: float = 0.5
    scan_ratios: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98)
    max_rounds: int = 3
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Raise PrunewiseError naming the first bad option and how to fix it."""
        if self.method not in METHODS:
            _fail(f"unknown method {self.method!r}; known methods: {', '.join(METHODS)}")
        _ratio("sparsity", self.sparsity)
        _ratio("fc_sparsity", self.fc_sparsity, optional=True)
        if self.scope not in SCOPES:
            _fail(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if self.scope == "global" and self.method != "magnitude":
            _fail(f"scope='global' applies only to method 'magnitude', not {self.method!r}")
        if self.scope == "global" and self.fc_sparsity is not None:
            _fail("scope='global' uses one threshold for all layers; leave fc_sparsity unset")
        if self.method == "nm" and self.fc_sparsity is not None:
            _fail("fc_sparsity has no effect with method 'nm' (ratio is 1 - n/m); leave it unset")
        if not _is_int(self.group) or self.group < 2:
            _fail(f"group must be an integer of at least 2, got {self.group!r}")
        if self.axis not in AXES:
            _fail(f"axis must be one of {', '.join(AXES)}, got {self.axis!r}")
        if not (_is_int(self.n) and _is_int(self.m)) or not 1 <= self.n <= self.m:
            _fail(f"N:M needs 1 <= N <= M, got {self.n}:{self.m}")
        if self.m < 2:
            _fail(f"N:M needs M >= 2, got {self.n}:{self.m}")
        if self.method == "balanced":
            for ratio in (self.sparsity, self.fc_sparsity):
                if ratio is not None and round_count(self.group * (1 - ratio)) < 1:
                    _fail(
                        f"balanced sparsity {ratio} keeps 0 weights per group of {self.group}; "
                        "lower the sparsity or raise group"
                    )
        if not isinstance(self.peak, bool):
            _fail(f"peak must be True or False, got {self.peak!r}")
        if self.peak and self.method != "reversed":
            _fail("peak=True applies only to method 'reversed'; for all layers use method='peak'")
        if not _is_number(self.delta) or not math.isfinite(self.delta) or self.delta < 0:
            _fail(f"delta must be a finite number >= 0 (accuracy points), got {self.delta!r}")
        ratios = _as_tuple("scan_ratios", self.scan_ratios)
        if not ratios:
            _fail("scan_ratios must not be empty")
        for r in ratios:
            if not _is_number(r) or not 0 < r < 1:
                _fail(f"scan_ratios must lie in (0, 1), got {r!r}")
        if any(b <= a for a, b in itertools.pairwise(ratios)):
            _fail(f"scan_ratios must be sorted increasing without repeats, got {ratios}")
        if not _is_int(self.max_rounds) or self.max_rounds < 1:
            _fail(f"max_rounds must be an integer of at least 1, got {self.max_rounds!r}")
        skip = _as_tuple("skip", self.skip)
        for name in skip:
            if not isinstance(name, str):
                _fail(f"skip must hold layer names (str), got {name!r}")
        object.__setattr__(self, "scan_ratios", tuple(float(r) for r in ratios))
        object.__setattr__(self, "skip", skip)


@dataclass(frozen=True)
class ScanRecord(_Record):
    """One sensitivity scan: a layer pruned alone to each ratio, evaluated without fine-tuning."""

    round: int
    layer: str
    reference: float
    points: tuple[tuple[float, float], ...]
    peak: float


@dataclass(frozen=True)
class StageRecord(_Record):
    """One pruning stage: measured sparsity of its layers and accuracy before/pruned/fine-tuned."""

    label: str
    layers: tuple[str, ...]
    sparsity: dict[str, float]
    overall: float
    acc_before: float
    acc_pruned: float
    acc_finetuned: float


@dataclass(frozen=True, eq=False)
class SparsifyResult:
    """The pruned model (masks made permanent), its keep-masks, and the stage and scan records."""

    model: nn.Module
    masks: dict[str, Tensor]
    stages: tuple[StageRecord, ...]
    scans: tuple[ScanRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors): sparsity overall and per layer, stages, scans."""
        return {
            "overall_sparsity": overall_sparsity(self.masks),
            "layer_sparsity": layer_sparsity(self.masks),
            "stages": [s.to_dict() for s in self.stages],
            "scans": [s.to_dict() for s in self.scans],
        }


def overall_sparsity(masks: Mapping[str, Tensor]) -> float:
    """Zeros / total over all the given masks (0.0 for none)."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def layer_sparsity(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Layer name -> fraction of zeros in its mask."""
    return {name: mask_sparsity(mask) for name, mask in masks.items()}


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
    if not isinstance(module, MASKABLE):
        _fail(f"{layer!r} is not a Conv1d, Conv2d or Linear layer of the model")
    points = []
    for ratio in ratios:
        with _trial(module, _deeper(module, check_ratio(ratio))):
            points.append((float(ratio), _accuracy(evaluate, model)))
    return points


@dataclass
class _Run:
    """The state of one `sparsify` call: working model, callbacks, accuracy, records."""

    model: nn.Module
    config: SparsifyConfig
    evaluate: Evaluate
    finetune: Finetune
    log: Log
    acc: float | None = None
    stages: list[StageRecord] = field(default_factory=list)
    scans: list[ScanRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Pick the layers (prunable, not skipped) and their current ratios."""
        named = {n: m for n, m in self.model.named_modules() if isinstance(m, MASKABLE)}
        unknown = [s for s in self.config.skip if s not in named]
        if unknown:
            _fail(f"skip names no prunable layer: {unknown}; prunable layers: {list(named)}")
        self.layers = {n: m for n, m in named.items() if n not in self.config.skip}
        if not self.layers:
            _fail("every prunable layer is in skip; nothing to prune")
        self.ratios = {n: mask_sparsity(_keep(m)) for n, m in self.layers.items()}

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

    def reversed(self) -> None:
        """One stage per layer: Linear layers last to first, then convolutions last to first."""
        linear = [n for n, m in self.layers.items() if isinstance(m, nn.Linear)]
        conv = [n for n in self.layers if n not in linear]
        for number, name in enumerate([*linear[::-1], *conv[::-1]], start=1):
            label = f"reversed {name}"
            ratio = self.scan(number, name, label) if self.config.peak else self.target(name)
            self.stage(label, {name: _deeper(self.layers[name], ratio)})
            self.ratios[name] = max(ratio, self.ratios[name])

    def peak(self) -> None:
        """Scan every layer, prune all to their peaks, fine-tune; repeat while a peak grows."""
        for round_ in range(1, self.config.max_rounds + 1):
            label = f"peak round {round_}"
            peaks = {n: self.scan(round_, n, label) for n in self.layers}
            grown = {n: p for n, p in peaks.items() if p > self.ratios[n]}
            if not grown:
                break
            self.stage(label, {n: _deeper(self.layers[n], p) for n, p in grown.items()})
            self.ratios.update(grown)


def sparsify(
    model: nn.Module,
    config: SparsifyConfig,
    evaluate: Evaluate,
    finetune: Finetune,
    *,
    log: Log | None = None,
) -> SparsifyResult:
    """Prune a deep copy of `model` by `config`; fine-tuning and evaluation are the callbacks'."""
    if not isinstance(config, SparsifyConfig):
        _fail(f"sparsify needs a SparsifyConfig, got {type(config).__name__}")
    run = _Run(copy.deepcopy(model), config, evaluate, finetune, log or (lambda _line: None))
    if config.method == "reversed":
        run.reversed()
    elif config.method == "peak":
        run.peak()
    else:
        run.one_shot()
    masks = {n: k.detach().clone() for n, k in run.masks().items()}
    make_permanent(run.model)
    return SparsifyResult(run.model, masks, tuple(run.stages), tuple(run.scans))
