"""Plain-text tables and JSON records of analyses, plans and pruning summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prunewise.analysis.importance import gamma_channels_per_unit
from prunewise.analysis.prunability import Prunability
from prunewise.analysis.sparsity import ModelAnalysis
from prunewise.errors import printable
from prunewise.prune.plan import PruningPlan
from prunewise.records import Scores, Summary
from prunewise.records.deploy import TOP1
from prunewise.report.blocks import integer, three_decimals

__all__ = [
    "analysis_records",
    "format_table",
    "group_rows",
    "iterations_table",
    "layer_rows",
    "summary_rows",
]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return three_decimals(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return integer(v)
    return printable(str(v))  # names read from files


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Columns aligned with spaces; numbers right-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(vals, widths, numeric, strict=True)
        ).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    return "\n".join(out)


def analysis_records(
    analysis: ModelAnalysis,
    plan: PruningPlan | None = None,
    prunable: Prunability | None = None,
) -> dict[str, Any]:
    """JSON-ready record of an analysis, with the plan's decision for each group and what the
    policy may prune (`prunability`)."""
    decisions = {d.group: d for d in plan.decisions} if plan else {}
    groups = []
    for g in analysis.groups:
        d = decisions.get(g.group)
        counts = gamma_channels_per_unit(analysis.graph, g.group) if g.gamma is not None else None
        gamma = None if counts is None else g.gamma / np.maximum(counts, 1)  # per norm channel
        per_unit = int(counts.max()) if counts is not None and len(counts) else 1
        groups.append(
            {
                "group": g.group,
                "channels": g.channels,
                "channels_per_unit": per_unit,
                "prunable": g.prunable,
                "tied": g.tied,
                "blocked": g.blocked,
                "sparsity_mean": g.sparsity_mean,
                "sparsity_std": g.sparsity_std,
                "sparsity_cv": g.sparsity_cv,
                "gamma_min": None if gamma is None else float(gamma.min()),
                "gamma_mean": None if gamma is None else float(gamma.mean()),
                "gamma_max": None if gamma is None else float(gamma.max()),
                "gamma": None if g.gamma is None else [float(v) for v in g.gamma],
                "ratio": None if d is None else d.ratio,
                "kept": None if d is None else len(d.kept),
                "decision": None if d is None else d.reason,
                "mixed": analysis.graph.group(g.group).mixed,
            }
        )
    layers = [
        {
            "module": ls.module,
            "channels": ls.channels,
            "sparsity_mean": ls.mean,
            "sparsity_std": ls.std,
            "sparsity_cv": ls.cv,
        }
        for ls in analysis.layers
    ]
    return {
        "input_shape": list(analysis.graph.input_shape),
        "images": analysis.images,
        "params": analysis.params,
        "flops": analysis.flops,
        "flops_convention": "multiply-accumulates per image (fvcore convention)",
        "layers": layers,
        "groups": groups,
        "policy": dict(plan.policy) if plan else None,
        "prunability": prunable.record() if prunable else None,
    }


def group_rows(record: dict[str, Any], *, all_groups: bool = False) -> tuple[list[str], list[list]]:
    """Headers and rows of the per-group table: the groups with a |gamma| or that the plan
    prunes (all with `all_groups`); a pruned group whose channels a norm mixes says so."""
    headers = [
        "group",
        "ch",
        "S mean",
        "S std",
        "CV",
        "|g| min",
        "|g| mean",
        "|g| max",
        "P",
        "kept",
        "note",
    ]
    rows = []
    for g in record["groups"]:
        pruned = g["kept"] is not None and g["kept"] < g["channels"]
        if not (all_groups or pruned or g["gamma_mean"] is not None):
            continue
        note = g["decision"] or (g["blocked"] or "")
        if note.startswith(("eq", "continuous")):
            note = note.split(": ", 1)[0]
        if pruned and g.get("mixed"):  # not in the records of earlier versions
            note = f"{note}; not exact: {g['mixed']}"
        per_unit = g.get("channels_per_unit", 1)  # not in the records of earlier versions
        rows.append(
            [
                g["group"],
                g["channels"] if per_unit == 1 else f"{g['channels']} x {per_unit}",
                g["sparsity_mean"],
                g["sparsity_std"],
                g["sparsity_cv"],
                g["gamma_min"],
                g["gamma_mean"],
                g["gamma_max"],
                g["ratio"],
                g["kept"],
                note,
            ]
        )
    return headers, rows


def layer_rows(record: dict[str, Any]) -> tuple[list[str], list[list]]:
    """Headers and rows of the per-layer input sparsity table (eq. 1 and 2)."""
    headers = ["layer", "in ch", "S mean", "S std", "CV"]
    rows = [
        [r["module"], r["channels"], r["sparsity_mean"], r["sparsity_std"], r["sparsity_cv"]]
        for r in record["layers"]
    ]
    return headers, rows


def summary_rows(before: Scores, after: Scores, metric: str = TOP1) -> tuple[list[str], list[list]]:
    """Headers and rows comparing params, FLOPs (and the scores, top-1 accuracy or `metric`,
    when known) before/after."""
    metric = "acc" if metric == TOP1 else metric
    headers = ["", "before", "after", "reduction"]
    rows = []
    for key, label in (("params", "params"), ("flops", "FLOPs (MACs)")):
        b, a = getattr(before, key), getattr(after, key)
        rows.append([label, b, a, f"{100 * (1 - a / b):.2f} %" if b else "-"])
    for key, label in (("val_score", f"val {metric} %"), ("test_score", f"test {metric} %")):
        b, a = getattr(before, key), getattr(after, key)
        if b is not None and a is not None:
            rows.append([label, b, a, f"{a - b:+.2f} pt"])
    return headers, rows


def iterations_table(summary: Summary) -> str:
    """The run's per-iteration table as text: params, FLOPs, their reductions and the scores
    of every stage, the kept one marked."""
    rows = []
    for r in summary.stages:
        first = r.iteration == 0
        rows.append(
            [
                r.iteration,
                r.scores.params,
                r.scores.flops,
                "-" if first else f"{100 * (r.params_reduction or 0.0):.1f} %",
                "-" if first else f"{100 * (r.flops_reduction or 0.0):.1f} %",
                r.scores.val_score,
                r.scores.test_score,
                "kept" if r.iteration == summary.kept else "",
            ]
        )
    metric = "" if summary.metric == "accuracy" else f" {summary.metric}"
    unit = summary.unit
    headers = ["iter", "params", "FLOPs", "params -", "FLOPs -"]
    headers += [f"val{metric} {unit}".rstrip(), f"test{metric} {unit}".rstrip(), ""]
    return format_table(headers, rows, title=f"Iterations (stopped: {summary.stopped})")
