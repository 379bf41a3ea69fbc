"""What `sparsify` does (`SparsifyConfig`, checked when made) and what it records.

The rules each method follows are in `prunewise.prune.fine.methods`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from prunewise.errors import PrunewiseError
from prunewise.prune.fine.groups import AXES
from prunewise.prune.fine.masks import mask_sparsity, round_count

__all__ = [
    "METHODS",
    "SCOPES",
    "Evaluate",
    "Finetune",
    "Log",
    "ScanRecord",
    "SparsifyConfig",
    "SparsifyResult",
    "StageRecord",
    "layer_sparsity",
    "overall_sparsity",
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
