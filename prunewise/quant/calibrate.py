"""Activation calibration: observers that record ranges and histograms, and the range rules.

An observer sits on a tensor during calibration. The first pass records the exact minimum and
maximum; methods that need the distribution (percentile, MSE) make a second pass that fills a
histogram over that range. `choose_qparams` turns what was observed into scale and zero point.
"""

from __future__ import annotations

import torch
from torch import nn

from prunewise.quant.config import Int8Config
from prunewise.quant.qparams import (
    QParams,
    affine_qparams,
    pow2_candidates,
    quantization_mse,
    symmetric_qparams,
)

__all__ = ["Observer", "choose_qparams", "histogram_range"]

_MSE_STEPS = 100  # candidate clipping ranges tried by the MSE method


class Observer(nn.Module):
    """Identity on the forward path; records min/max (pass 1) or a histogram (pass 2)."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.collect_histogram = False
        self.min_val = float("inf")
        self.max_val = float("-inf")
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record `x` and return it unchanged."""
        v = x.detach()
        if not self.collect_histogram:
            self.min_val = min(self.min_val, float(v.min()))
            self.max_val = max(self.max_val, float(v.max()))
            self.seen += v.shape[0] if v.dim() else 1
        elif self.max_val > self.min_val:
            h = torch.histc(v.float(), bins=self.bins, min=self.min_val, max=self.max_val)
            self.hist += h.to(torch.float64).cpu()
        return x

    def centers(self) -> torch.Tensor:
        """Centre of each histogram bin."""
        width = (self.max_val - self.min_val) / self.bins
        return self.min_val + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)


def histogram_range(
    hist: torch.Tensor, lo: float, hi: float, percentile: float
) -> tuple[float, float]:
    """The values below which (100 - p) % and p % of the histogram's mass lie."""
    total = float(hist.sum())
    if total <= 0 or hi <= lo:
        return lo, hi
    cdf = torch.cumsum(hist, 0) / total
    edges = torch.linspace(lo, hi, hist.numel() + 1, dtype=torch.float64)
    upper = int(torch.searchsorted(cdf, torch.tensor(percentile / 100.0, dtype=torch.float64)))
    lower = int(
        torch.searchsorted(cdf, torch.tensor(1.0 - percentile / 100.0, dtype=torch.float64))
    )
    new_hi = float(edges[min(upper + 1, hist.numel())])
    new_lo = float(edges[lower]) if lo < 0 else lo
    return new_lo, new_hi


def _best(candidates: list[QParams], x: torch.Tensor, w: torch.Tensor) -> QParams:
    errors = [
        float(quantization_mse(x, q.scale, q.zero_point, q.qmin, q.qmax, weights=w))
        for q in candidates
    ]
    return candidates[min(range(len(candidates)), key=errors.__getitem__)]


def _make(lo: float, hi: float, symmetric: bool, dtype: str) -> QParams:
    if symmetric:
        return symmetric_qparams(max(abs(lo), abs(hi)))
    return affine_qparams(lo, hi, dtype)


def choose_qparams(obs: Observer, cfg: Int8Config) -> QParams:
    """Scale and zero point for one observed tensor under the calibration method of `cfg`."""
    lo, hi = obs.min_val, obs.max_val
    if lo > hi:  # never reached during calibration: a harmless unit range
        lo, hi = 0.0, 1.0
    symmetric = cfg.power_of_two
    dtype = "int8" if symmetric else cfg.activation_dtype
    has_hist = float(obs.hist.sum()) > 0
    if cfg.calibration == "percentile" and has_hist:
        lo, hi = histogram_range(obs.hist, lo, hi, cfg.percentile)
    if cfg.calibration == "mse" and has_hist:
        x, w = obs.centers(), obs.hist
        steps = [i / _MSE_STEPS for i in range(1, _MSE_STEPS + 1)]
        best = _best([_make(lo * t, hi * t, symmetric, dtype) for t in steps], x, w)
    else:
        best = _make(lo, hi, symmetric, dtype)
    if not cfg.power_of_two:
        return best
    options = [QParams(s, 0, "int8") for s in pow2_candidates(best.scale)]
    if has_hist:
        return _best(options, obs.centers(), obs.hist)
    return options[1]  # without a histogram, never clip what min/max saw
