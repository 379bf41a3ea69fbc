"""Processing-element array model: cycles of sparse layers under load imbalance (DESIGN §3).

The exact rules (per layer, mask of shape (O, I, *kernel); non-zero entries are kept weights):

- Groups of `group` weights along `axis` are enumerated as in `prunewise.prune.fine.groups`
  (axis "in": output channel major, then kernel position, then group index along input
  channels); a short last group has only its real positions.
- P consecutive groups of that order form one step; the last step may hold fewer than P.
  A step lasts as long as its fullest group: max non-zeros among its groups, one MAC cycle
  per non-zero. Cycles per output position = sum over steps of that maximum.
- Every output position (Hout·Wout for a conv, 1 for a fully connected layer) repeats this:
  modelled = cycles per position × positions.
- dense = the same with every weight kept (sum over steps of the longest group in the step);
  ideal = ceil(nonzeros / P) × positions; utilisation = nonzeros·positions / (P·modelled);
  speedup = dense / modelled. An all-zero layer has modelled = 0: utilisation 0, speedup inf.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prunewise.errors import PrunewiseError
from prunewise.prune.fine.groups import AXES, check_weight, group_lengths, group_nonzeros

__all__ = ["LayerCycles", "PEArray", "layer_cycles", "model_cycles", "total"]


@dataclass(frozen=True)
class PEArray:
    """P processing elements, each taking one group of `group` weights along `axis` per step."""

    pes: int = 16
    group: int = 16
    axis: str = "in"

    def __post_init__(self) -> None:
        if isinstance(self.pes, bool) or not isinstance(self.pes, int) or self.pes < 1:
            raise PrunewiseError(
                f"a PE array needs at least 1 processing element, got {self.pes!r}"
            )
        if isinstance(self.group, bool) or not isinstance(self.group, int) or self.group < 2:
            raise PrunewiseError(f"PE array group size must be an integer ≥ 2, got {self.group!r}")
        if self.axis not in AXES:
            raise PrunewiseError(f"unknown group axis {self.axis!r}; known axes: {', '.join(AXES)}")


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den else empty


@dataclass(frozen=True)
class LayerCycles:
    """Cycles of one layer (or a total): dense, ideal, modelled, and the ratios derived from them.

    `nonzeros` counts kept weights, `macs` = nonzeros × positions (the useful MAC cycles),
    `pes` the array width; `utilisation` and `speedup` are computed from these.
    """

    dense: int
    ideal: int
    modelled: int
    nonzeros: int
    macs: int
    pes: int
    utilisation: float = field(init=False)
    speedup: float = field(init=False)

    def __post_init__(self) -> None:
        values = (self.dense, self.ideal, self.modelled, self.nonzeros, self.macs, self.pes)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise PrunewiseError(f"layer cycles must be non-negative integers, got {values}")
        if self.pes < 1 or not self.ideal <= self.modelled <= self.dense:
            raise PrunewiseError(
                f"inconsistent layer cycles: need ideal ≤ modelled ≤ dense and pes ≥ 1, got "
                f"ideal {self.ideal}, modelled {self.modelled}, dense {self.dense}, pes {self.pes}"
            )
        if self.macs > self.pes * self.modelled:
            raise PrunewiseError(
                f"inconsistent layer cycles: {self.macs} MACs cannot run in {self.modelled} "
                f"cycles on {self.pes} PEs"
            )
        utilisation = _ratio(self.macs, self.pes * self.modelled, 0.0)
        object.__setattr__(self, "utilisation", utilisation)
        object.__setattr__(self, "speedup", _ratio(self.dense, self.modelled, math.inf))


def _step_cycles(per_group: Tensor, pes: int) -> int:
    """Sum over steps of P consecutive groups of the largest value in the step."""
    pad = -per_group.numel() % pes
    if pad:
        per_group = torch.cat([per_group, per_group.new_zeros(pad)])
    return int(per_group.reshape(-1, pes).amax(dim=1).sum()) if per_group.numel() else 0


def layer_cycles(mask: Tensor, array: PEArray | None = None, positions: int = 1) -> LayerCycles:
    """Dense, ideal and modelled cycles of one layer's mask (any tensor; non-zeros are kept)."""
    array = PEArray() if array is None else array
    check_weight(mask)
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise PrunewiseError(f"output positions must be a positive integer, got {positions!r}")
    counts = group_nonzeros(mask, array.group, array.axis)
    lengths = group_lengths(mask.shape, array.group, array.axis, device=counts.device)
    nonzeros = int(counts.sum())
    return LayerCycles(
        dense=_step_cycles(lengths, array.pes) * positions,
        ideal=math.ceil(nonzeros / array.pes) * positions,
        modelled=_step_cycles(counts, array.pes) * positions,
        nonzeros=nonzeros,
        macs=nonzeros * positions,
        pes=array.pes,
    )


def model_cycles(
    masks: Mapping[str, Tensor], positions: Mapping[str, int], array: PEArray | None = None
) -> dict[str, LayerCycles]:
    """Cycles per layer; `positions` gives Hout·Wout per name (a 2-D, FC mask defaults to 1)."""
    extra = sorted(set(positions) - set(masks))
    if extra:
        raise PrunewiseError(f"output positions given for layers without a mask: {extra}")
    result = {}
    for name, mask in masks.items():
        if name in positions:
            pos = positions[name]
        elif isinstance(mask, Tensor) and mask.dim() == 2:
            pos = 1
        else:
            raise PrunewiseError(
                f"layer {name!r}: give its output positions (Hout·Wout); only fully connected "
                "(2-D) masks default to 1"
            )
        try:
            result[name] = layer_cycles(mask, array, pos)
        except PrunewiseError as err:
            raise PrunewiseError(f"layer {name!r}: {err}") from err
    return result


def total(layers: Mapping[str, LayerCycles] | list[LayerCycles]) -> LayerCycles:
    """Sum of the layers' cycles, with utilisation and speed-up recomputed from the sums."""
    items = list(layers.values()) if isinstance(layers, Mapping) else list(layers)
    if not items:
        raise PrunewiseError("total of layer cycles needs at least one layer")
    pes = {c.pes for c in items}
    if len(pes) > 1:
        raise PrunewiseError(f"cannot total layers modelled on different PE counts {sorted(pes)}")
    return LayerCycles(
        dense=sum(c.dense for c in items),
        ideal=sum(c.ideal for c in items),
        modelled=sum(c.modelled for c in items),
        nonzeros=sum(c.nonzeros for c in items),
        macs=sum(c.macs for c in items),
        pes=pes.pop(),
    )
