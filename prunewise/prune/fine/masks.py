"""Fine-grained pruning masks (True = keep): magnitude, global magnitude, balanced, N:M.

Rules shared by every function here:

- Ranking: weights are ranked by |w|, larger first; equal |w| rank by flat index, the lower
  index first (it is kept first and removed last). Global ranking orders layers as the dict does.
- Rounding: counts such as ratio·n or g·(1 − ratio) are first rounded to 9 decimals (to drop
  float noise such as 1 − 0.9 = 0.09999…) and then rounded half to even (Python's `round`).
- Balanced groups (Kang 2019): a full group of g keeps k = round(g·(1 − ratio)) weights; k = 0
  is refused. A short last group of length L < g keeps max(1, round(L·(1 − ratio))).
- N:M: a full group of M keeps exactly N; a short last group of length L keeps min(N, L), so
  every group has at most N non-zeros.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from prunewise.errors import PrunewiseError
from prunewise.prune.fine.groups import (
    axis_length,
    check_axis,
    check_group,
    check_weight,
    group_view,
    ungroup_view,
)

__all__ = [
    "balanced_mask",
    "check_ratio",
    "global_magnitude_masks",
    "magnitude_mask",
    "mask_sparsity",
    "nm_mask",
    "round_count",
]


def check_ratio(ratio: float) -> float:
    """Return `ratio` as a float, or raise unless it is a number in [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise PrunewiseError(f"ratio must be in [0, 1), got {ratio!r}")
    return float(ratio)


def round_count(x: float) -> int:
    """Round a count: to 9 decimals first (drops float noise), then half to even."""
    return round(round(x, 9))


def _scores(weight: Tensor, name: str = "weight") -> Tensor:
    if not isinstance(weight, Tensor):
        raise PrunewiseError(f"{name} must be a tensor, got {type(weight).__name__}")
    scores = weight.detach().abs()
    if not scores.is_floating_point():
        scores = scores.double()
    if scores.numel() and not bool(torch.isfinite(scores.amax())):
        raise PrunewiseError(f"{name} holds NaN or infinite values; cannot rank by magnitude")
    return scores


def _keep_top(scores: Tensor, keep: int) -> Tensor:
    """Flat bool mask keeping the `keep` largest scores, equal scores by lower index first."""
    n = scores.numel()
    mask = torch.ones(n, dtype=torch.bool, device=scores.device)
    remove = n - keep
    if remove <= 0:
        return mask
    if keep <= 0:
        return ~mask
    threshold = scores.kthvalue(remove).values
    below = scores < threshold
    tied = scores == threshold
    tied_removed = remove - int(below.sum())
    tied_kept = int(tied.sum()) - tied_removed
    mask &= ~below
    mask[torch.nonzero(tied).flatten()[tied_kept:]] = False
    return mask


def magnitude_mask(weight: Tensor, ratio: float) -> Tensor:
    """Keep-mask removing exactly round(ratio·numel) smallest-|w| weights of one tensor, but
    keeping at least one: a layer with none left cuts the network (its output is constant)."""
    ratio = check_ratio(ratio)
    scores = _scores(weight).reshape(-1)
    keep = max(1, scores.numel() - round_count(ratio * scores.numel()))
    return _keep_top(scores, keep).reshape(weight.shape)


def global_magnitude_masks(weights: Mapping[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Keep-masks with one |w| threshold across layers, removing exactly round(ratio·total);
    a layer the threshold would empty keeps its largest |w| (one more weight each)."""
    ratio = check_ratio(ratio)
    if not weights:
        raise PrunewiseError("global magnitude pruning needs at least one weight")
    flat = [_scores(w, f"weight {name!r}").reshape(-1) for name, w in weights.items()]
    dtype = flat[0].dtype
    for f in flat[1:]:
        dtype = torch.promote_types(dtype, f.dtype)
    devices = {f.device for f in flat}
    if len(devices) > 1:
        raise PrunewiseError(f"weights lie on several devices ({sorted(map(str, devices))})")
    scores = torch.cat([f.to(dtype) for f in flat])
    keep = scores.numel() - round_count(ratio * scores.numel())
    parts = list(torch.split(_keep_top(scores, keep), [f.numel() for f in flat]))
    for i, (part, f) in enumerate(zip(parts, flat, strict=True)):
        if not part.any():  # emptied: the layer would cut the network
            parts[i] = _keep_top(f, 1)
    return {name: p.reshape(w.shape) for (name, w), p in zip(weights.items(), parts, strict=True)}


def _per_group_top(
    weight: Tensor, group: int, axis: str, keep_full: int, keep_short: int
) -> Tensor:
    """Keep-mask keeping the top `keep_full` of every full group and `keep_short` of a short one."""
    scores = _scores(weight)
    grouped = group_view(scores, group, axis, fill=-1.0)
    order = torch.sort(grouped, dim=1, descending=True, stable=True).indices
    rows = grouped.shape[0]
    keep = torch.full((rows,), keep_full, dtype=torch.int64, device=grouped.device)
    length = axis_length(weight.shape, axis)
    if length % group:
        per_row = math.ceil(length / group)
        keep.view(-1, per_row)[:, -1] = keep_short
    ranks = torch.arange(group, device=grouped.device).expand(rows, group)
    kept = torch.zeros_like(grouped, dtype=torch.bool)
    kept.scatter_(1, order, ranks < keep[:, None])
    return ungroup_view(kept, weight.shape, group, axis)


def balanced_mask(weight: Tensor, ratio: float, group: int = 16, axis: str = "in") -> Tensor:
    """Kang's balanced keep-mask: every group of `group` keeps its k = round(g·(1−ratio)) largest.

    A short last group of length L keeps max(1, round(L·(1 − ratio))); ties keep the lower index.
    """
    ratio = check_ratio(ratio)
    check_group(group)
    check_axis(axis)
    keep_full = round_count(group * (1 - ratio))
    if keep_full < 1:
        raise PrunewiseError(
            f"ratio {ratio} keeps round({group}·{1 - ratio:.3g}) = 0 weights per group of "
            f"{group}; use a lower ratio or a larger group"
        )
    check_weight(weight)
    short = axis_length(weight.shape, axis) % group
    keep_short = max(1, round_count(short * (1 - ratio))) if short else keep_full
    return _per_group_top(weight, group, axis, keep_full, keep_short)


def nm_mask(weight: Tensor, n: int, m: int, axis: str = "in") -> Tensor:
    """N:M keep-mask: every M consecutive weights along `axis` keep their N largest.

    A short last group of length L < M keeps min(N, L).
    """
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m))
    if not ints or not 1 <= n <= m:
        raise PrunewiseError(f"N:M needs 1 ≤ N ≤ M, got {n}:{m}")
    if m < 2:
        raise PrunewiseError(f"N:M needs M ≥ 2, got {n}:{m}")
    check_axis(axis)
    check_weight(weight)
    short = axis_length(weight.shape, axis) % m
    return _per_group_top(weight, m, axis, n, min(n, short) if short else n)


def mask_sparsity(mask: Tensor) -> float:
    """Fraction of zero (pruned) entries of a mask."""
    if not isinstance(mask, Tensor) or mask.numel() == 0:
        raise PrunewiseError("mask sparsity needs a non-empty tensor")
    return 1.0 - int(torch.count_nonzero(mask)) / mask.numel()
