"""Read a run folder (docs/run-folder.md) and assemble what its report shows.

`load_run` is the only function here that touches files; it tolerates a run still in progress
(any file may be missing) and records what is missing. Everything else is a pure function of
the loaded records.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunewise.errors import PrunewiseError
from prunewise.records import (
    IterationRow,
    RecordError,
    Scores,
    StageMetrics,
    Summary,
    read_checked,
    reduction,
    summarize_stages,
)
from prunewise.records import kept_iteration as kept_of_rows
from prunewise.records.deploy import DeployRecord
from prunewise.records.dpu import DpuProfile
from prunewise.records.run import METRICS, SUMMARY, resume_advice
from prunewise.records.schema import ANALYSIS, CONFIG, DEPLOY, DPU, FAILURE, GROUP_EXPERIMENT

__all__ = [
    "RunRecords",
    "Stage",
    "StageRow",
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
    "fine-tuning": "fine-tuning (unfinished: running or stopped)",
    "pruning": "pruned, not yet fine-tuned (running or stopped)",
    "started": "started (unfinished: running or stopped)",
    "nothing": "the policy removed no channel: stopped",
    "missing": "folder missing",
    "damaged": "metrics.json damaged: its figures are left out",
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
    metrics: StageMetrics | None = None
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
    summary: Summary | None
    problems: tuple[str, ...] = field(default_factory=tuple)
    deployment: dict[str, DeployRecord] = field(default_factory=dict)  # stage -> deploy.json
    dpu: dict[str, DpuProfile] = field(default_factory=dict)  # stage -> dpu/<stage>.json


def _read(path: Path, problems: list[str], schema: Any) -> dict[str, Any] | None:
    """A JSON object of `schema` from `path`; None (and a note in `problems` when the file is
    unreadable or damaged) otherwise."""
    record, problem = read_checked(path, schema)
    if problem is not None:
        problems.append(problem)
    return record


def _typed(path: Path, problems: list[str], schema: Any, parse: Any) -> Any:
    """`parse` (a record's from_dict) of the object in `path`; None when it is missing or
    damaged (noted in `problems`)."""
    data = _read(path, problems, schema)
    if data is None:
        return None
    try:
        return parse(data)
    except RecordError as exc:
        problems.append(f"{path.parent.name}/{path.name}: damaged ({exc}); left out")
        return None


def _stage(folder: Path, iteration: int, problems: list[str]) -> Stage:
    if not folder.is_dir():
        return Stage(iteration, "missing")
    metrics = _typed(folder / "metrics.json", problems, METRICS, StageMetrics.from_dict)
    analysis = _read(folder / "analysis.json", problems, ANALYSIS)
    plan = _read(folder / "plan.json", problems, dict)
    if metrics is not None:
        status = "done" if metrics.done else "fine-tuning"
    elif (folder / "metrics.json").is_file():  # there, but unreadable
        status = "damaged"
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
    summary = _typed(root / "summary.json", problems, SUMMARY, Summary.from_dict)
    failure = _read(root / "failed.json", problems, FAILURE)
    if failure is not None:
        problems.append(
            f"failed.json: the last attempt ended with an error ({failure['error']}); "
            f"{resume_advice(config.get('format'), root)} retries from the last finished step"
        )
    last = max(folders, default=0)
    stages = []
    for k in range(1, last + 1):
        st = _stage(folders.get(k, root / f"iter_{k:02d}"), k, problems)
        if (
            summary
            and summary.stopped == "nothing_to_prune"
            and k == last
            and (st.status in ("pruning", "started"))
        ):
            st = Stage(k, "nothing", st.metrics, st.analysis, st.plan)
        stages.append(st)
    deployment = {}
    for stage in sorted((root / "deploy").glob("*/deploy.json")):
        record = _typed(stage, problems, DEPLOY, DeployRecord.from_dict)
        if record is not None:
            deployment[stage.parent.name] = record
    dpu = {}
    for path in sorted((root / "dpu").glob("*.json")):
        record = _typed(path, problems, DPU, DpuProfile.from_dict)
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
    if run.summary is not None:
        return run.summary.metric, run.summary.unit
    name = _get(run.config, "metric")
    if isinstance(name, str) and name:
        unit = _get(run.config, "unit")
        return name, unit if isinstance(unit, str) else ""
    return "accuracy", "%"


def tolerance(run: RunRecords) -> float | None:
    """Accuracy points below the baseline still accepted (summary, else config)."""
    t = run.summary.tolerance if run.summary is not None else None
    return t if t is not None else _get(run.config, "tolerance")


@dataclass(frozen=True)
class StageRow:
    """One row of the per-iteration table: a stage's size and scores (None: not yet known),
    the share of the baseline's params and FLOPs removed, the score's change from the
    baseline, whether it held within tolerance and whether it is the kept one."""

    iteration: int
    status: str
    scores: Scores | None = None
    val_score_pruned: float | None = None
    seconds: float | None = None
    within_tolerance: bool | None = None
    params_reduction: float | None = None
    flops_reduction: float | None = None
    val_delta: float | None = None
    test_delta: float | None = None
    kept: bool = False


def _baseline_scores(run: RunRecords) -> Scores | None:
    m = run.baseline.metrics
    if run.baseline.status == "done" and m is not None:
        return m.scores
    return run.summary.baseline if run.summary is not None else None


def kept_iteration(run: RunRecords) -> tuple[int | None, bool]:
    """(kept iteration, final?): summary.json's, else the last within tolerance so far."""
    if run.summary is not None:
        return run.summary.kept, True
    if _baseline_scores(run) is None:
        return None, False
    done = []
    for st in run.iterations:
        if st.status != "done" or st.metrics is None:
            break
        done.append(IterationRow(st.iteration, st.metrics.scores, None, None, None, _within(st)))
    return kept_of_rows(done), False


def _within(st: Stage) -> bool | None:
    return st.metrics.within_tolerance if st.metrics is not None else None


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def stage_rows(run: RunRecords) -> list[StageRow]:
    """The per-iteration table (paper A tables 1-10): baseline first, then every iteration."""
    base = _baseline_scores(run)
    kept, _ = kept_iteration(run)
    in_summary = {r.iteration: r for r in run.summary.iterations} if run.summary else {}
    tol = tolerance(run)
    rows = []
    if base is not None:
        seconds = run.baseline.metrics.seconds if run.baseline.metrics else None
        rows.append(StageRow(0, "done", base, seconds=seconds, kept=kept == 0))
    for st in run.iterations:
        m = st.metrics
        scores, within, pruned = None, None, m.val_score_pruned if m else None
        if st.status == "done" and m is not None:
            scores, within = m.scores, m.within_tolerance
        elif st.iteration in in_summary:
            row = in_summary[st.iteration]
            scores, within = row.scores, row.within_tolerance
            pruned = pruned if pruned is not None else row.val_score_pruned
        status = "done" if scores is not None else st.status
        if scores is not None and within is None and None not in (tol, base):
            within = scores.val_score >= base.val_score - tol
        rows.append(
            StageRow(
                st.iteration,
                status,
                scores,
                val_score_pruned=pruned,
                seconds=m.seconds if m else None,
                within_tolerance=within,
                params_reduction=reduction(base.params, scores.params) if base and scores else None,
                flops_reduction=reduction(base.flops, scores.flops) if base and scores else None,
                val_delta=_delta(scores and scores.val_score, base and base.val_score),
                test_delta=_delta(scores and scores.test_score, base and base.test_score),
                kept=kept == st.iteration and status == "done",
            )
        )
    return rows


def summary_record(run: RunRecords) -> Summary | None:
    """The run's summary: summary.json, else one of the stages finished so far (provisional,
    `stopped` None); None before the baseline is finished."""
    if run.summary is not None:
        return run.summary
    base = run.baseline.metrics
    if run.baseline.status != "done" or base is None:
        return None
    within = {r.iteration: r.within_tolerance for r in stage_rows(run) if r.status == "done"}
    done = [
        dataclasses.replace(s.metrics, within_tolerance=within[s.iteration])
        for s in run.iterations
        if s.status == "done" and s.metrics is not None
    ]
    metric, unit = metric_of(run)
    return summarize_stages(
        base, done, stopped=None, tolerance=tolerance(run), metric=metric, unit=unit
    )


def _teacher(run: RunRecords) -> str:
    teacher = _get(run.config, "finetune", "teacher")
    distill = next((s.metrics.distill for s in run.iterations if s.metrics), None)
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
    loaded = bool(_get(c, "model", "baseline"))  # the model is the checkpoint's, not trained here
    if loaded:
        out.append(("model", "the baseline checkpoint's (not built from --model)"))
        out.append(("baseline checkpoint", str(c["model"]["baseline"])))
    elif name is not None:
        out.append(("model", f"{name}" + (f" (width {width:g})" if width is not None else "")))
    if _get(c, "model", "weights") and not loaded:
        out.append(("weights", str(c["model"]["weights"])))
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
        if p.get("fixed_ratio"):
            text = f"uniform, ratio {p['fixed_ratio']:g} of every prunable group per iteration"
        opts = [f"{k} {p[k]}" for k in ("min_channels", "round_to") if p.get(k) not in (None, 1)]
        opts += [k for k in ("reference_compat", "prune_tied", "compensate") if p.get(k)]
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
        if loaded and label == "baseline epochs":
            continue  # nothing trained the loaded baseline here
        if label == "sparsity images":  # what was measured: fewer where fewer were given
            v = _get(run.baseline.analysis, "images") or v
        if v is not None and not isinstance(v, Mapping):
            out.append((label, f"{v:g}" if isinstance(v, float) else str(v)))
    slim = _get(c, "train", "slimming")
    if isinstance(slim, int | float):  # runs before the option existed do not say
        text = (
            "none (paper A: ranks the trained gamma as it is)"
            if not slim
            else (
                f"network slimming: L1 {slim:g} on every BatchNorm gamma, "
                + (
                    "fine-tuning (the baseline was loaded)"
                    if loaded
                    else "baseline and fine-tuning"
                )
            )
        )
        out.append(("sparsity training", text))
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
    elif b.status == "damaged":
        out.append(f"baseline/: {STATUS_TEXT['damaged']}")
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
    if run.summary is None and (run.root / "summary.json").is_file():
        out.append("summary.json: damaged; the kept iteration is the report's own reading")
    elif run.summary is None:
        out.append("summary.json: the run is not finished; the kept iteration is provisional")
    elif not run.deployment and _get(run.config, "deploy", "enabled") is True:
        out.append("deploy/: the deploy stage (INT8, ONNX Runtime, latency) has not run yet")
    out += run.problems
    return out
