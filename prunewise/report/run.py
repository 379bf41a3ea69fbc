"""Read a run folder (docs/run-folder.md) and assemble what its report shows.

`load_run` is the only function here that touches files; it tolerates a run still in progress
(any file may be missing) and records what is missing. Everything else is a pure function of
the loaded records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunewise.errors import PrunewiseError
from prunewise.report.records import (
    ANALYSIS,
    CONFIG,
    DEPLOY,
    DPU,
    FAILURE,
    GROUP_EXPERIMENT,
    METRICS,
    METRICS_DONE,
    SUMMARY,
    shape_problem,
)

__all__ = [
    "RunRecords",
    "Stage",
    "config_highlights",
    "flatten",
    "kept_iteration",
    "load_run",
    "metric_of",
    "missing_items",
    "stage_rows",
    "summary_record",
    "tolerance",
]

_ITER = re.compile(r"^iter_(\d+)$")

STATUS_TEXT = {
    "done": "done",
    "fine-tuning": "fine-tuning (in progress)",
    "pruning": "pruned, not yet fine-tuned (in progress)",
    "started": "started (in progress)",
    "nothing": "the policy removed no channel: stopped",
    "missing": "folder missing",
}

STOP_TEXT = {
    "tolerance": "validation {metric} fell more than the tolerance below the baseline",
    "max_iterations": "the maximum number of iterations was reached",
    "nothing_to_prune": "the policy removed no channel",
}


@dataclass(frozen=True)
class Stage:
    """One stage folder (baseline = iteration 0) and the records found in it."""

    iteration: int
    status: str
    metrics: dict[str, Any] | None = None
    analysis: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunRecords:
    """Everything the report reads from a run folder."""

    root: Path
    config: dict[str, Any]
    baseline: Stage
    iterations: tuple[Stage, ...]
    group_experiment: dict[str, Any] | None
    summary: dict[str, Any] | None
    problems: tuple[str, ...] = field(default_factory=tuple)
    deployment: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> deploy.json
    dpu: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> dpu/<stage>.json


def _read(path: Path, problems: list[str], schema: Any) -> dict[str, Any] | None:
    """A JSON object of `schema` from `path`; None (and a note in `problems` when the file is
    unreadable or damaged) otherwise."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path.parent.name}/{path.name}: unreadable ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.parent.name}/{path.name}: damaged, not a JSON object; left out")
        return None
    found = shape_problem(data, schema)
    if found is None and schema is METRICS and data.get("done"):
        found = shape_problem(data, METRICS_DONE)
    if found is not None:
        problems.append(f"{path.parent.name}/{path.name}: damaged ({found}); left out")
        return None
    return data


def _stage(folder: Path, iteration: int, problems: list[str]) -> Stage:
    if not folder.is_dir():
        return Stage(iteration, "missing")
    metrics = _read(folder / "metrics.json", problems, METRICS)
    analysis = _read(folder / "analysis.json", problems, ANALYSIS)
    plan = _read(folder / "plan.json", problems, dict)
    if metrics is not None:
        status = "done" if metrics.get("done") else "fine-tuning"
    else:
        status = "pruning" if plan is not None else "started"
    return Stage(iteration, status, metrics, analysis, plan)


def load_run(run_dir: str | Path) -> RunRecords:
    """Read every JSON record of a run folder; missing files are left as None."""
    root = Path(run_dir)
    if not root.is_dir():
        raise PrunewiseError(f"{root} is not a prunewise run folder: no such directory")
    problems: list[str] = []
    config = _read(root / "config.json", problems, CONFIG)
    if config is None:
        why = problems[-1] if problems else "config.json is missing"
        raise PrunewiseError(
            f"{root} is not a prunewise run folder that can be read ({why}); "
            "start a run with `prunewise run --out DIR`"
        )
    baseline = _stage(root / "baseline", 0, problems)
    folders = {
        int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _ITER.match(p.name))
    }
    summary = _read(root / "summary.json", problems, SUMMARY)
    failure = _read(root / "failed.json", problems, FAILURE)
    if failure is not None:
        problems.append(
            f"failed.json: the last attempt ended with an error ({failure['error']}); "
            f"`prunewise run --resume {root}` retries from the last finished step"
        )
    last = max(folders, default=0)
    stages = []
    for k in range(1, last + 1):
        st = _stage(folders.get(k, root / f"iter_{k:02d}"), k, problems)
        if (
            summary
            and summary.get("stopped") == "nothing_to_prune"
            and k == last
            and (st.status in ("pruning", "started"))
        ):
            st = Stage(k, "nothing", st.metrics, st.analysis, st.plan)
        stages.append(st)
    deployment = {}
    for stage in sorted((root / "deploy").glob("*/deploy.json")):
        record = _read(stage, problems, DEPLOY)
        if record is not None:
            deployment[stage.parent.name] = record
    dpu = {}
    for path in sorted((root / "dpu").glob("*.json")):
        record = _read(path, problems, DPU)
        if record is not None:
            dpu[path.stem] = record
    return RunRecords(
        root=root,
        config=config,
        baseline=baseline,
        iterations=tuple(stages),
        group_experiment=_read(root / "group_experiment.json", problems, GROUP_EXPERIMENT),
        summary=summary,
        problems=tuple(problems),
        deployment=deployment,
        dpu=dpu,
    )


def _get(data: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def _points(unit: str) -> str:
    return "points" if unit == "%" else unit or "units"


def metric_of(run: RunRecords) -> tuple[str, str]:
    """(name, unit) of the run's score: a `prune_iteratively` job's own metric, else top-1
    accuracy in %."""
    for source in (run.summary, run.config):
        name = _get(source, "metric")
        if isinstance(name, str) and name:
            unit = _get(source, "unit")
            return name, unit if isinstance(unit, str) else ""
    return "accuracy", "%"


def tolerance(run: RunRecords) -> float | None:
    """Accuracy points below the baseline still accepted (summary, else config)."""
    t = _get(run.summary, "tolerance")
    return t if t is not None else _get(run.config, "tolerance")


def _baseline_row(run: RunRecords) -> dict[str, Any] | None:
    m = run.baseline.metrics if run.baseline.status == "done" else None
    src = m or _get(run.summary, "baseline")
    if not src or src.get("params") is None or src.get("flops") is None:
        return None
    return {k: src.get(k) for k in ("params", "flops", "val_acc", "test_acc")}


def kept_iteration(run: RunRecords) -> tuple[int | None, bool]:
    """(kept iteration, final?): summary.json's, else the last within tolerance so far."""
    if run.summary is not None and "kept" in run.summary:
        return run.summary["kept"], True
    if _baseline_row(run) is None:
        return None, False
    kept = 0
    for st in run.iterations:
        if st.status != "done" or not st.metrics.get("within_tolerance"):
            break
        kept = st.iteration
    return kept, False


def stage_rows(run: RunRecords) -> list[dict[str, Any]]:
    """The per-iteration table (paper A tables 1-10): baseline first, then every iteration."""
    base = _baseline_row(run)
    kept, _ = kept_iteration(run)
    summary_rows = {r.get("iteration"): r for r in _get(run.summary, "iterations") or []}
    tol = tolerance(run)
    rows = []
    if base is not None:
        seconds = _get(run.baseline.metrics, "seconds")
        rows.append(
            {"iteration": 0, "status": "done", **base, "seconds": seconds, "kept": kept == 0}
        )
    for st in run.iterations:
        src = st.metrics if st.status == "done" else summary_rows.get(st.iteration)
        row: dict[str, Any] = {
            "iteration": st.iteration,
            "status": st.status if not src else "done",
        }
        m = src or st.metrics or {}
        for key in ("params", "flops", "val_acc", "test_acc", "val_acc_pruned", "seconds"):
            row[key] = m.get(key)
        if src is not None:
            within = m.get("within_tolerance")
            if within is None and None not in (tol, base, m.get("val_acc")):
                within = m["val_acc"] >= base["val_acc"] - tol
            row["within_tolerance"] = within
        if base is not None:
            for key in ("params", "flops"):
                if row[key] is not None and base[key]:
                    row[f"{key}_reduction"] = 1 - row[key] / base[key]
            for key in ("val_acc", "test_acc"):
                if row[key] is not None and base.get(key) is not None:
                    row[f"{key}_delta"] = row[key] - base[key]
        row["kept"] = kept == st.iteration and row["status"] == "done"
        rows.append(row)
    return rows


def summary_record(run: RunRecords) -> dict[str, Any] | None:
    """A summary.json-shaped record of the finished stages (for the plots); None without one."""
    rows = [r for r in stage_rows(run) if r["status"] == "done"]
    if not rows or rows[0]["iteration"] != 0:
        return None
    keys = ("params", "flops", "val_acc", "test_acc")
    channels = _get(run.summary, "channels")
    if not channels:
        stages = [run.baseline, *(s for s in run.iterations if s.status == "done")]
        per_stage = [(_get(s.metrics, "channels") or {}) for s in stages]
        channels = {
            name: [c.get(name) for c in per_stage if c.get(name) is not None]
            for name in per_stage[0]
        }
    kept, _ = kept_iteration(run)
    return {
        "baseline": {k: rows[0][k] for k in keys},
        "iterations": [
            {
                "iteration": r["iteration"],
                **{k: r[k] for k in keys},
                "params_reduction": r.get("params_reduction"),
                "flops_reduction": r.get("flops_reduction"),
                "within_tolerance": r.get("within_tolerance"),
            }
            for r in rows[1:]
        ],
        "kept": kept,
        "tolerance": tolerance(run),
        "channels": channels or {},
        "metric": metric_of(run)[0],
        "unit": metric_of(run)[1],
    }


def _teacher(run: RunRecords) -> str:
    teacher = _get(run.config, "finetune", "teacher")
    distill = next((s.metrics.get("distill") for s in run.iterations if s.metrics), None)
    if teacher is None and isinstance(distill, Mapping):
        teacher = distill.get("teacher")
    own = _get(run.config, "metric") is not None  # prune_iteratively: the user's fine-tune
    pixel = "per-pixel " if _get(run.config, "task") == "segmentation" else ""
    if teacher in (None, "none"):
        plain = f"{pixel}cross-entropy only (no distillation)"
        return "your own fine-tune, no teacher" if own else plain
    if own:
        return f"your own fine-tune, given the {teacher} model as its teacher"
    ft = _get(run.config, "finetune") or distill or {}
    extra = ", ".join(
        f"{k} {ft[k]:g}" for k in ("temperature", "weight") if isinstance(ft.get(k), int | float)
    )
    extra = f" ({extra})" if extra else ""
    return f"{pixel}knowledge distillation from the {teacher} model{extra}"


def config_highlights(run: RunRecords) -> list[tuple[str, str]]:
    """(label, value) pairs of the settings that matter most, for the report's header."""
    c = run.config
    out: list[tuple[str, str]] = []
    name, width = _get(c, "model", "name") or _get(c, "model"), _get(c, "model", "width")
    if name is not None:
        out.append(("model", f"{name}" + (f" (width {width:g})" if width is not None else "")))
    if _get(c, "model", "baseline"):
        out.append(("baseline checkpoint", str(c["model"]["baseline"])))
    data = _get(c, "data", "name") or _get(c, "dataset")
    if data is not None:
        out.append(("dataset", str(data)))
    task = _get(c, "task")
    if task not in (None, "classification"):
        out.append(("task", f"{task}, scored by {metric_of(run)[0]}"))
    shape = _get(run.baseline.analysis, "input_shape")
    if shape:
        out.append(("input shape", " × ".join(str(d) for d in shape)))
    p = _get(c, "policy") or {}
    if isinstance(p, Mapping) and "alpha" in p:
        scheme = {(0.5, 0.5): " (scheme 1)", (1.0, 1.0): " (scheme 2)"}.get(
            (float(p["alpha"]), float(p.get("beta", 0))), ""
        )
        text = f"{p.get('policy', 'eq4')}, alpha {p['alpha']:g}, beta {p.get('beta', 0):g}{scheme}"
        opts = [f"{k} {p[k]}" for k in ("min_channels", "round_to") if p.get(k) not in (None, 1)]
        opts += [k for k in ("reference_compat", "prune_tied") if p.get(k)]
        if p.get("min_sparsity"):
            opts.append(f"min_sparsity {p['min_sparsity']:g}")
        out.append(("pruning policy", text + (f"; {', '.join(opts)}" if opts else "")))
    tol = tolerance(run)
    if tol is not None:
        metric, unit = metric_of(run)
        out.append(("tolerance", f"{tol:g} {_points(unit)} of validation {metric}"))
    for label, path in (
        ("max iterations", ("max_iterations",)),
        ("baseline epochs", ("train", "epochs")),
        ("fine-tune epochs per iteration", ("finetune", "epochs")),
        ("batch size", ("batch_size",)),
        ("learning rate", ("train", "lr")),
        ("sparsity images", ("analysis_images",)),
        ("group experiment G", ("group_experiment",)),
        ("seed", ("train", "seed")),
    ):
        v = _get(c, *path)
        if v is not None and not isinstance(v, Mapping):
            out.append((label, f"{v:g}" if isinstance(v, float) else str(v)))
    out.append(("fine-tuning", _teacher(run)))
    return out


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mapping -> sorted (dotted key, JSON value) pairs."""
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += flatten(value, f"{name}.")
        else:
            out.append((name, json.dumps(value)))
    return out


def missing_items(run: RunRecords) -> list[str]:
    """What the report cannot show yet, in words."""
    out: list[str] = []
    b = run.baseline
    if b.status == "missing":
        out.append("baseline/: not started")
    elif b.status != "done":
        out.append("baseline/metrics.json: baseline training not finished")
    if b.status != "missing" and b.analysis is None:
        out.append("baseline/analysis.json: no sparsity or |gamma| analysis of the baseline")
    g = _get(run.config, "group_experiment")
    if run.group_experiment is None and g is not None:  # a job without the stage has no key
        out.append(
            "group_experiment.json: skipped by the configuration (group_experiment = 0)"
            if g == 0
            else "group_experiment.json: the group experiment (fig. 20) has not run yet"
        )
    for st in run.iterations:
        if st.status not in ("done", "nothing"):
            out.append(f"iter_{st.iteration:02d}/: {STATUS_TEXT[st.status]}")
    if run.summary is None:
        out.append("summary.json: the run is not finished; the kept iteration is provisional")
    elif not run.deployment and _get(run.config, "deploy", "enabled") is True:
        out.append("deploy/: the deploy stage (INT8, ONNX Runtime, latency) has not run yet")
    out += run.problems
    return out
