"""Groups of weights an accelerator fetches together: views of a weight as (groups, g) rows.

The one enumeration rule used everywhere (masks, non-zero counts, the PE-array model):
a weight (O, I, *kernel) is read as (O, I, K) with K = prod(kernel) (K = 1 for Linear);
the group axis is moved last, the other axes keep their order and are flattened in C order,
and the group axis is cut into consecutive groups of g. So for

- ``"in"``: output channel major, then kernel position, then group index along input channels;
- ``"out"``: input channel major, then kernel position, then group index along output channels;
- ``"flat"``: output channel major, then group index along the row (I, *kernel) in memory order.

Short groups: if the length D along the group axis is not a multiple of g, the last group of
every row holds only D mod g real weights; the view pads it with dummy positions (``fill``),
which are never kept by a mask and never counted as non-zeros.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunewise.errors import PrunewiseError

__all__ = [
    "AXES",
    "axis_length",
    "check_axis",
    "check_group",
    "check_weight",
    "group_lengths",
    "group_nonzeros",
    "group_view",
    "ungroup_view",
]

AXES: tuple[str, ...] = ("in", "out", "flat")


def check_axis(axis: str) -> None:
    """Raise unless `axis` is one of the known group axes."""
    if axis not in AXES:
        raise PrunewiseError(f"unknown group axis {axis!r}; known axes: {', '.join(AXES)}")


def check_group(group: int) -> None:
    """Raise unless `group` is an integer of at least 2."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 2:
        raise PrunewiseError(f"group size must be an integer of at least 2, got {group!r}")


def check_weight(weight: Tensor) -> None:
    """Raise unless `weight` is a tensor of shape (O, I, ...)."""
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise PrunewiseError(f"expected a conv or linear weight of shape (O, I, ...), got {shape}")


def _rows(weight: Tensor, axis: str) -> Tensor:
    """The weight with the group axis last: (O, K, I), (I, K, O) or (O, I*K)."""
    w3 = weight.reshape(weight.shape[0], weight.shape[1], -1)
    if axis == "in":
        return w3.permute(0, 2, 1)
    if axis == "out":
        return w3.permute(1, 2, 0)
    return w3.reshape(weight.shape[0], -1)


def axis_length(shape: torch.Size | tuple[int, ...], axis: str) -> int:
    """Length of the weight along the group axis (I, O, or I·prod(kernel) for "flat")."""
    if axis == "in":
        return int(shape[1])
    if axis == "out":
        return int(shape[0])
    return math.prod(int(s) for s in shape[1:])


def group_view(weight: Tensor, group: int, axis: str = "in", fill: float | bool = 0) -> Tensor:
    """Weights as (num_groups, group) rows in the enumeration order of this module (a copy).

    If the length along the group axis is not a multiple of `group`, the last group of every
    row is short and padded with `fill` up to `group` entries (dummy positions).
    """
    check_group(group)
    check_axis(axis)
    check_weight(weight)
    rows = _rows(weight, axis)
    length = rows.shape[-1]
    pad = -length % group
    if pad:
        filler = torch.full((*rows.shape[:-1], pad), fill, dtype=rows.dtype, device=rows.device)
        rows = torch.cat([rows, filler], dim=-1)
    return rows.reshape(-1, group)


def ungroup_view(
    grouped: Tensor, shape: torch.Size | tuple[int, ...], group: int, axis: str = "in"
) -> Tensor:
    """Inverse of `group_view`: drop the padding and restore the weight `shape`."""
    check_group(group)
    check_axis(axis)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise PrunewiseError(f"expected a conv or linear weight shape (O, I, ...), got {shape}")
    length = axis_length(shape, axis)
    padded = math.ceil(length / group) * group
    expected = math.prod(shape) // length * padded if length else 0
    if grouped.dim() != 2 or grouped.shape[1] != group or grouped.numel() != expected:
        raise PrunewiseError(
            f"grouped tensor of shape {tuple(grouped.shape)} does not fit weight shape {shape} "
            f"with group {group} along {axis!r}"
        )
    out, inp, k = shape[0], shape[1], math.prod(shape[2:])
    if axis == "flat":
        return grouped.reshape(out, padded)[:, :length].reshape(shape)
    if axis == "in":
        w3 = grouped.reshape(out, k, padded)[..., :length].permute(0, 2, 1)
    else:
        w3 = grouped.reshape(inp, k, padded)[..., :length].permute(2, 0, 1)
    return w3.reshape(shape)


def group_lengths(
    shape: torch.Size | tuple[int, ...],
    group: int,
    axis: str = "in",
    device: torch.device | None = None,
) -> Tensor:
    """Number of real (not padded) weights in each group, shape (num_groups,), int64."""
    check_group(group)
    check_axis(axis)
    shape = tuple(int(s) for s in shape)
    length = axis_length(shape, axis)
    per_row = math.ceil(length / group)
    row = torch.full((per_row,), group, dtype=torch.int64, device=device)
    if length % group:
        row[-1] = length % group
    rows = math.prod(shape) // length if length else 0
    return row.repeat(rows)


def group_nonzeros(mask: Tensor, group: int, axis: str = "in") -> Tensor:
    """Non-zeros per group, shape (num_groups,), int64, in the enumeration order of this module."""
    keep = mask if mask.dtype == torch.bool else mask != 0
    grouped = group_view(keep, group, axis, fill=False).view(torch.uint8)
    acc = torch.uint8 if group <= torch.iinfo(torch.uint8).max else torch.int32
    return grouped.sum(dim=1, dtype=acc).to(torch.int64)
