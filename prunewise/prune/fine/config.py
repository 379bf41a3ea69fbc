"""What `sparsify` does (`SparsifyConfig`, checked when made) and what it records.

The rules each method follows are in `prunewise.prune.fine.methods`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NoReturn

import torch
from torch import Tensor, nn

from prunewise.errors import PrunewiseError
from prunewise.prune.fine.groups import AXES
from prunewise.prune.fine.masks import mask_sparsity, round_count
from prunewise.settings import Settings, setting, spec_of

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


@dataclass(frozen=True)
class SparsifyConfig(_Record, Settings):
    """What `sparsify` does; every option is checked when the config is made."""

    section: ClassVar[str] = "sparsify"

    method: str = setting("magnitude", "fine-grained method", choices=METHODS, flag="--method")
    sparsity: float = setting(
        0.8,
        "fraction of weights removed per layer",
        low=0,
        high=1,
        high_open=True,
        flag="--sparsity",
    )
    fc_sparsity: float | None = setting(
        None,
        "fraction removed of linear layers (unset: --sparsity)",
        kind="float",
        low=0,
        high=1,
        high_open=True,
        flag="--fc-sparsity",
    )
    scope: str = setting(
        "layer",
        "magnitude: one ratio per layer or one global threshold",
        choices=SCOPES,
        flag="--scope",
    )
    group: int = setting(16, "balanced: group size g", low=2, high=65536, flag="--group")
    axis: str = setting("in", "balanced: axis of the groups", choices=AXES, flag="--axis")
    n: int = setting(2, "nm: N kept of every M", low=1, high=65536)
    m: int = setting(4, "nm: group size M", low=2, high=65536)
    peak: bool = setting(False, "reversed: prune each layer to its peak", flag="--peak")
    delta: float = setting(
        0.5, "peak: allowed accuracy drop per layer, points", low=0, high=100, flag="--delta"
    )
    scan_ratios: tuple[float, ...] = setting(
        (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98),
        "peak: ratios each scan tries, increasing",
        kind="floats",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    max_rounds: int = setting(3, "peak: scan rounds", low=1, high=1000, flag="--max-rounds")
    skip: tuple[str, ...] = setting(
        (),
        "layers to leave dense",
        kind="strs",
        allow_empty=True,
        flag="--skip",
        metavar="LAYERS",
    )

    @classmethod
    def from_given(cls, given: Mapping[str, Any]) -> SparsifyConfig:
        """The config of the options a user gave (field names to values), refusing any its
        method would not read even at its default value (`refuse_ignored`)."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            _fail(f"{cls.__name__} has no option {unknown}; its options: {names}")
        config = cls(**given)
        config.refuse_ignored(given)
        return config

    def refuse_ignored(self, names: Iterable[str]) -> None:
        """Raise PrunewiseError for the first of the options `names` (field names, e.g. the
        flags a user gave) that the method does not read: given, it would be ignored silently."""
        mode = "reversed with peak" if self.method == "reversed" and self.peak else self.method
        for name in names:
            modes = _ONLY_FOR.get(name)
            if modes is not None and mode not in modes:
                if name in ("n", "m"):
                    what = f"{self.section}.n:m (--nm) = {self.n}:{self.m}"
                else:
                    what = (
                        f"{self.label(name, spec_of(type(self), name))} = {getattr(self, name)!r}"
                    )
                _fail(
                    f"{what} has no effect with method {mode!r} (it applies to "
                    f"{', '.join(map(repr, modes))}); leave it unset"
                )

    def check(self) -> None:
        """Raise PrunewiseError naming the first combination of options that cannot work."""
        if self.scope == "global" and self.method != "magnitude":
            _fail(f"scope='global' applies only to method 'magnitude', not {self.method!r}")
        if self.scope == "global" and self.fc_sparsity is not None:
            _fail("scope='global' uses one threshold for all layers; leave fc_sparsity unset")
        if self.n > self.m:
            _fail(f"N:M needs 1 <= N <= M, got {self.n}:{self.m}")
        defaults = {f.name: f.default for f in fields(self)}
        self.refuse_ignored(name for name in _ONLY_FOR if getattr(self, name) != defaults[name])
        if self.method == "balanced":
            for ratio in (self.sparsity, self.fc_sparsity):
                if ratio is not None and round_count(self.group * (1 - ratio)) < 1:
                    _fail(
                        f"balanced sparsity {ratio} keeps 0 weights per group of {self.group}; "
                        "lower the sparsity or raise group"
                    )
        if self.peak and self.method != "reversed":
            _fail("peak=True applies only to method 'reversed'; for all layers use method='peak'")
        ratios = self.scan_ratios
        if any(b <= a for a, b in itertools.pairwise(ratios)):
            _fail(f"scan_ratios must be sorted increasing without repeats, got {ratios}")


_ONLY_FOR = {
    "sparsity": ("magnitude", "reversed", "balanced"),  # nm keeps n of m; peak scans
    "fc_sparsity": ("magnitude", "reversed", "balanced"),
    "group": ("balanced",),
    "axis": ("balanced", "nm"),
    "n": ("nm",),
    "m": ("nm",),
    "delta": ("peak", "reversed with peak"),
    "scan_ratios": ("peak", "reversed with peak"),
    "max_rounds": ("peak",),
    "scope": ("magnitude",),
}
"""The options only some methods read: given to another, they would be ignored silently."""


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
