"""Figures of a run's report, each a pure function from JSON records to PNG bytes.

The records are those of docs/run-folder.md: `analysis.json` (sparsity, |gamma|),
`group_experiment.json` (paper A fig. 20) and a run's `Summary` record (prunewise.records).
matplotlib is imported inside the functions and drawn with its Agg canvas: no pyplot state,
no display, nothing done at import time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prunewise.errors import PrunewiseError
from prunewise.records import IterationRow, Summary

__all__ = [
    "accuracy_flops_plot",
    "channels_plot",
    "gamma_density_plot",
    "group_experiment_plot",
    "size_plot",
    "sparsity_plot",
]

DPI = 100
BASE_COLOR = "#7f7f7f"
OK_COLOR = "#1f77b4"
BAD_COLOR = "#d62728"
TEST_COLOR = "#ff7f0e"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _layer_ticks(ax: Any, names: Sequence[str], max_labels: int = 60) -> None:
    """One tick per layer, rotated; with many layers only every k-th is labelled."""
    n = len(names)
    step = max(1, math.ceil(n / max_labels))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks)
    rotation, ha = (90, "center") if n > 12 else (35, "right")
    ax.set_xticklabels([names[i] for i in ticks], rotation=rotation, ha=ha, fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)


def _stage_label(iteration: int) -> str:
    return "baseline" if iteration == 0 else f"iter {iteration}"


def sparsity_plot(analysis: Mapping[str, Any]) -> bytes:
    """Per-layer input sparsity, mean ± std over images (figs. 2-9), beside its CV (fig. 10)."""
    layers = analysis.get("layers") or []
    if not layers:
        raise PrunewiseError("the analysis has no layers to plot")
    names = [r["module"] for r in layers]
    mean = np.array([100 * (r["sparsity_mean"] or 0.0) for r in layers])
    std = np.array([100 * (r["sparsity_std"] or 0.0) for r in layers])
    cv = [r.get("sparsity_cv") for r in layers]
    n = len(names)
    side = n <= 20
    fig = _figure(13, 4.6) if side else _figure(max(10, 0.24 * n), 8.5)
    ax_s, ax_cv = fig.subplots(1, 2, width_ratios=(3, 2)) if side else fig.subplots(2, 1)
    x = np.arange(n)
    ax_s.bar(x, mean, color=OK_COLOR, alpha=0.85, label="mean")
    ax_s.errorbar(x, mean, yerr=std, fmt="none", ecolor="black", capsize=3, lw=1, label="± std")
    ax_s.set_ylim(0, 100)
    ax_s.set_ylabel("input sparsity S (%)")
    ax_s.set_title(
        f"Input sparsity per layer (eq. 1), over {analysis.get('images', '?')} images",
        fontsize=10,
    )
    ax_s.legend(fontsize=8, loc="upper left")
    ax_s.grid(axis="y", alpha=0.3)
    _layer_ticks(ax_s, names)
    cv_pct = np.array([np.nan if v is None else 100 * v for v in cv])
    ax_cv.bar(x, np.nan_to_num(cv_pct), color=TEST_COLOR, alpha=0.85)
    for i in np.nonzero(np.isnan(cv_pct))[0]:
        ax_cv.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax_cv.axhline(15, color="black", ls="--", lw=1, label="15 % (paper A's bound)")
    top = np.nanmax(cv_pct) if np.isfinite(cv_pct).any() else 0.0
    ax_cv.set_ylim(0, max(20.0, 1.15 * top))
    ax_cv.set_ylabel("CV = std / mean (%)")
    ax_cv.set_title("Coefficient of variation of S (eq. 2)", fontsize=10)
    ax_cv.legend(fontsize=8, loc="upper right")
    ax_cv.grid(axis="y", alpha=0.3)
    _layer_ticks(ax_cv, names)
    return _png(fig)


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian kernel density (Silverman's bandwidth); None when the values do not vary."""
    if values.size < 2:
        return None
    std = values.std(ddof=1)
    iqr = np.subtract(*np.percentile(values, [75, 25]))
    spread = min(std, iqr / 1.349) if iqr > 0 else std
    if not spread > 0:
        return None
    bw = 0.9 * spread * values.size ** (-0.2)
    z = (grid[:, None] - values[None, :]) / bw
    return np.exp(-0.5 * z**2).sum(axis=1) / (values.size * bw * math.sqrt(2 * math.pi))


def _value_range(vals: np.ndarray) -> tuple[float, float]:
    """x range of a density panel: from 0 when the values spread, else around the values."""
    vmin, vmax = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
    span = max(vmax - vmin, 0.05 * abs(vmax), 1e-6)
    lo = 0.0 if vmin < 0.3 * vmax else max(0.0, vmin - 0.15 * span)
    return lo, vmax + 0.15 * span


def gamma_density_plot(analysis: Mapping[str, Any]) -> bytes:
    """Density of |gamma| of every BatchNorm group (paper A figs. 12-18), small multiples."""
    groups = [g for g in analysis.get("groups") or [] if g.get("gamma")]
    if not groups:
        raise PrunewiseError("the analysis has no |gamma| values (no BatchNorm groups)")
    n = len(groups)
    ncols = min(n, 4 if n <= 12 else 6 if n <= 36 else 8)
    nrows = math.ceil(n / ncols)
    pw, ph = (3.1, 2.2) if ncols <= 4 else (2.3, 1.8)
    fig = _figure(max(6.0, pw * ncols), 0.6 + ph * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, g in zip(axes, groups, strict=False):
        vals = np.abs(np.asarray(g["gamma"], dtype=float))
        lo, hi = _value_range(vals)
        bins = int(min(30, max(6, 2 * math.ceil(math.sqrt(vals.size)))))
        ax.hist(vals, bins=bins, range=(lo, hi), density=True, color=OK_COLOR, alpha=0.35)
        grid = np.linspace(lo, hi, 200)
        dens = _kde(vals, grid)
        if dens is not None:
            ax.plot(grid, dens, color=OK_COLOR, lw=1.3)
        fixed = not g.get("prunable", True) or g.get("tied", False)
        label = f"{g['group']} ({len(vals)} ch){' fixed' if fixed else ''}"
        ax.set_title(label, fontsize=8, color=BASE_COLOR if fixed else "black")
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.supxlabel("|gamma| of the BatchNorm channels (summed over the group's BatchNorms)")
    fig.supylabel("density")
    fig.suptitle("Density of |gamma| per channel group (histogram and kernel density)", fontsize=11)
    return _png(fig)


def group_experiment_plot(record: Mapping[str, Any]) -> bytes:
    """Accuracy with |gamma| part g removed in every prunable BN, against g (fig. 20)."""
    acc = list(record.get("accuracy") or [])
    if not acc:
        raise PrunewiseError("the group experiment record has no accuracies")
    g = np.arange(1, len(acc) + 1)
    fig = _figure(10, 4.4)
    ax = fig.subplots()
    ax.plot(g, acc, marker="o", ms=3.5, lw=1.2, color=OK_COLOR, label="part g removed")
    base = record.get("baseline_acc")
    if base is not None:
        ax.axhline(base, color=BASE_COLOR, ls="--", lw=1.2, label=f"baseline {base:.2f} %")
    ax.set_xlim(0.5, len(acc) + 0.5)
    ax.set_xlabel(
        f"part g of the |gamma|-sorted channels (1 = smallest |gamma|, {len(acc)} = largest)"
    )
    split, images = record.get("split", "val"), record.get("images")
    ax.set_ylabel(f"{split} accuracy (%)" + (f", {images} images" if images else ""))
    ax.set_title(
        f"Group-wise experiment (paper A fig. 20): G = {record.get('G', len(acc))}, "
        "part g removed from every prunable BN, no fine-tuning",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def accuracy_flops_plot(summary: Summary) -> bytes:
    """Val and test score (accuracy unless the summary names another metric) against FLOPs
    kept (% of baseline), one labelled point per stage."""
    rows = summary.stages
    metric, unit = summary.metric, summary.unit
    base_flops = summary.baseline.flops
    x = np.array([100 * r.scores.flops / base_flops for r in rows])
    fig = _figure(11, 5)
    ax = fig.subplots()
    for key, color, label in (("val_score", OK_COLOR, "val"), ("test_score", TEST_COLOR, "test")):
        y = np.array(
            [np.nan if (v := getattr(r.scores, key)) is None else v for r in rows], dtype=float
        )
        if not np.isfinite(y).any():
            continue
        ax.plot(x, y, marker="o", color=color, lw=1.2, label=f"{label} {metric}")
        for xi, yi, r in zip(x, y, rows, strict=True):
            if np.isfinite(yi):
                ax.annotate(
                    _stage_label(r.iteration),
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(5, 6 if key == "val_score" else -12),
                    fontsize=8,
                    color=color,
                )
    kept = summary.kept
    kept_rows = [(xi, r) for xi, r in zip(x, rows, strict=True) if r.iteration == kept]
    if kept_rows:
        xi, r = kept_rows[0]
        ax.plot(
            [xi],
            [r.scores.val_score],
            marker="o",
            ms=15,
            mfc="none",
            mec="black",
            ls="none",
            label=f"kept: {_stage_label(kept)}",
        )
    tol, base_val = summary.tolerance, summary.baseline.val_score
    if tol is not None:
        ax.axhline(
            base_val - tol,
            color=BAD_COLOR,
            ls=":",
            lw=1.2,
            label=f"baseline val - tolerance ({tol:g}{' pt' if unit == '%' else ''})",
        )
    ax.set_xlim(max(105.0, x.max() + 5), max(0.0, x.min() - 8))
    ax.set_xlabel("FLOPs kept (% of the baseline's multiply-accumulates)  ← more pruning")
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    ax.set_title(f"{metric} against FLOPs kept, one point per iteration", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    return _png(fig)


def _stage_colors(rows: Sequence[IterationRow]) -> list[str]:
    return [
        BASE_COLOR if r.iteration == 0 else OK_COLOR if r.within_tolerance else BAD_COLOR
        for r in rows
    ]


def _scale(v: float) -> tuple[float, str]:
    """(divisor, unit prefix) that writes v with 1 to 3 digits before the point."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return factor, prefix
    return 1.0, ""


def size_plot(summary: Summary) -> bytes:
    """Parameters and FLOPs per stage, bars labelled with the reduction from the baseline."""
    from matplotlib.patches import Patch

    rows = summary.stages
    labels = [_stage_label(r.iteration) for r in rows]
    colors = _stage_colors(rows)
    kept = summary.kept
    fig = _figure(min(16, max(10, 2.2 * len(rows))), 4.4)
    axes = fig.subplots(1, 2)
    for ax, key, title, unit in (
        (axes[0], "params", "Parameters", "parameters"),
        (axes[1], "flops", "FLOPs (multiply-accumulates per image)", "MACs per image"),
    ):
        raw = np.array([getattr(r.scores, key) for r in rows], dtype=float)
        scale, prefix = _scale(raw[0])
        vals = raw / scale
        unit = f"{unit} ({prefix})" if prefix else unit
        bars = ax.bar(range(len(rows)), vals, color=colors)
        for i, r in enumerate(rows):
            if r.iteration == kept:
                bars[i].set_edgecolor("black")
                bars[i].set_linewidth(2)
        for i, v in enumerate(vals):
            text = f"{v:.3g} {prefix}" if i == 0 else f"-{100 * (1 - v / vals[0]):.1f} %"
            ax.annotate(
                text, (i, v), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8
            )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=30 if len(rows) > 6 else 0, fontsize=8)
        ax.set_ylim(0, vals.max() * 1.15)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles = [
        Patch(color=BASE_COLOR, label="baseline"),
        Patch(color=OK_COLOR, label="within tolerance"),
        Patch(color=BAD_COLOR, label="below tolerance"),
    ]
    if kept is not None:
        handles.append(Patch(facecolor="white", edgecolor="black", lw=2, label="kept"))
    axes[1].legend(handles=handles, fontsize=8, loc="upper right")
    fig.suptitle("Model size per stage (labels: reduction from the baseline)", fontsize=11)
    return _png(fig)


def channels_plot(summary: Summary) -> bytes:
    """Output channels of every conv/linear layer: baseline and after each iteration."""
    channels = summary.channels
    if not channels:
        raise PrunewiseError("the summary has no per-layer channel counts")
    names = list(channels)
    stages = max(len(v) for v in channels.values())
    iterations = [r.iteration for r in summary.stages][:stages]
    iterations += list(range(len(iterations), stages))
    n = len(names)
    fig = _figure(max(10, min(16, 0.18 * n * max(2, stages))), 5.5)
    ax = fig.subplots()
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    x = np.arange(n)
    bars = n * stages <= 160
    width = 0.85 / stages
    kept = summary.kept
    for s, it in enumerate(iterations):
        color = BASE_COLOR if s == 0 else cmap(0.15 + 0.75 * (s - 1) / max(1, stages - 2))
        label = _stage_label(it) + (" (kept)" if it == kept and it else "")
        y = np.array([v[s] if s < len(v) else np.nan for v in channels.values()], dtype=float)
        if bars:
            ax.bar(x - 0.425 + width * (s + 0.5), y, width, color=color, label=label)
        else:
            ax.plot(x, y, marker="o", ms=3, lw=1, color=color, label=label)
    _layer_ticks(ax, names)
    counts = [c for v in channels.values() for c in v if c]
    log = bool(counts) and max(counts) / min(counts) > 16
    if log:
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter("{x:g}")
    if counts:
        ax.set_ylim(top=max(counts) * (1.3 if log else 1.08))
    ax.set_ylabel("output channels")
    ax.set_title("Output channels per layer, baseline and after each iteration", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), title="stage")
    return _png(fig)
