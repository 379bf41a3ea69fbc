"""Paper A's algorithm 1, resumable: baseline, then measure -> prune -> fine-tune -> score.

One loop for every task: a `Work` (pipeline/work.py) makes the baseline, fine-tunes and
scores; the loop measures, decides, prunes, checkpoints and stops. Each stage writes its
model.pt, then its metrics.json (done); a stage found done is loaded, never recomputed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from prunewise.analysis import Prunability, analyze, count_flops, count_params, prunability
from prunewise.errors import PrunewiseError
from prunewise.graph import ChannelGraph, build_channel_graph
from prunewise.io import atomic_write_json, load_checkpoint, save_checkpoint, save_torch
from prunewise.pipeline.config import FinetuneConfig
from prunewise.pipeline.summary import layer_channels, summarize
from prunewise.pipeline.work import Work
from prunewise.progress import progress_bar
from prunewise.prune import (
    PruningPlan,
    RefinedConfig,
    apply_plan,
    decide,
    get_scope,
    inexact_warning,
    load_outside,
    outside_state,
    replace_scope,
)
from prunewise.records import (
    RunFolder,
    Scores,
    StageMetrics,
    chance_warning,
    reduction,
)
from prunewise.report import analysis_records
from prunewise.torchfile import torch_load
from prunewise.train import DistContext

__all__ = ["Job", "LoopSettings", "iterate"]


class LoopSettings(Protocol):
    """The settings the loop reads (RunConfig and LoopConfig both have them)."""

    policy: RefinedConfig
    finetune: FinetuneConfig
    tolerance: float
    max_iterations: int


@dataclass
class Job:
    """One iterative job: its settings, folder, task side, device and log."""

    config: LoopSettings
    folder: RunFolder
    work: Work
    device: torch.device
    log: logging.Logger
    input_shape: tuple[int, ...]
    progress: bool
    meta: dict[str, Any] = field(default_factory=dict)
    dist: DistContext = field(default_factory=DistContext)
    scope: str | None = None
    outer: nn.Module | None = None

    @property
    def main(self) -> bool:
        """Whether this process writes the folder (rank 0)."""
        return self.dist.is_main

    def part(self, model: nn.Module) -> nn.Module:
        """What is traced, measured and pruned: the sub-module `scope` names (a detector's
        backbone, the rest of the model kept as it is), else the whole model."""
        return get_scope(model, self.scope) if self.scope else model


def _load(job: Job, k: int) -> nn.Module:
    """The stage's model: its checkpoint, or with a scope the `outer` model with the stage's
    part in place and the stage's weights outside it (outer.pt)."""
    part = load_checkpoint(job.folder.file(k, "model.pt")).model
    if not job.scope:
        return part.to(job.device)
    whole = replace_scope(job.outer, job.scope, part)
    rest = torch_load(job.folder.file(k, "outer.pt"))
    wrong = load_outside(whole, job.scope, rest)
    if wrong:
        raise PrunewiseError(
            f"{job.folder.file(k, 'outer.pt')} does not fit the model given ({wrong[:3]}); resume "
            "with the model the job was started with"
        )
    return whole.to(job.device)


def _save(job: Job, k: int, model: nn.Module, meta: dict[str, Any]) -> None:
    """model.pt (the part, with a scope), and with a scope outer.pt: the other weights."""
    path = job.folder.file(k, "model.pt")
    save_checkpoint(path, job.part(model), input_shape=job.input_shape, meta=meta)
    if job.scope:
        save_torch(job.folder.file(k, "outer.pt"), outside_state(model, job.scope))


def _finish_stage(
    job: Job, model: nn.Module, metrics: StageMetrics
) -> tuple[nn.Module, StageMetrics]:
    """Score, write model.pt then metrics.json (done), drop the train state; the model
    reloaded from disk and the metrics written."""
    k = metrics.iteration
    val, test = job.work.score(model)
    within = None
    if k > 0:
        base = job.folder.finished_metrics(0)
        within = bool(val >= base.scores.val_score - job.config.tolerance)
    metrics = dataclasses.replace(
        metrics,
        done=True,
        within_tolerance=within,
        val_score=val,
        test_score=test,
        params=count_params(model),
        flops=count_flops(job.part(model), job.input_shape),
        channels=layer_channels(model),
    )
    if job.main:
        stage = job.folder.stage(k).name
        _save(job, k, model, {**job.meta, "stage": stage, **job.work.scores_meta(val, test)})
        job.folder.write_metrics(metrics)
        job.folder.file(k, "train_state.pt").unlink(missing_ok=True)
    job.dist.barrier()
    return _load(job, k), metrics


def _prunability(job: Job, graph: ChannelGraph) -> Prunability:
    policy = job.config.policy
    return prunability(graph, prune_tied=policy.prune_tied, importance=policy.importance)


def _score_text(job: Job, value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}{job.work.unit and ' ' + job.work.unit}"


def _baseline(job: Job) -> nn.Module:
    if job.folder.done(0):
        job.log.info("baseline: finished earlier, loaded")
        return _load(job, 0)
    start = time.perf_counter()
    model, made = job.work.baseline(job.folder.file(0, "train_state.pt"))
    metrics = StageMetrics(
        iteration=0,
        stage="baseline",
        source=made.get("source"),
        epochs=tuple(made.get("epochs") or ()),
        seconds=time.perf_counter() - start,
        extra={"chance": made["chance"]} if "chance" in made else {},
    )
    model, metrics = _finish_stage(job, model, metrics)
    if job.main:
        result = analyze(job.part(model), job.work.images(), input_shape=job.input_shape)
        prunable = _prunability(job, result.graph)
        job.log.info(f"baseline: {prunable.summary()}")
        if prunable.warning():
            job.log.warning(f"baseline: {prunable.warning()}")
        record = analysis_records(result, None, prunable)
        atomic_write_json(job.folder.file(0, "analysis.json"), record)
    m = metrics.scores
    job.log.info(
        f"baseline: params {m.params:,}, FLOPs {m.flops:,}, "
        f"{job.work.metric} {_score_text(job, m.val_score)}"
        + (f", test {_score_text(job, m.test_score)}" if m.test_score is not None else "")
    )
    if warning := chance_warning(metrics):
        job.log.warning(warning)
    job.dist.barrier()
    return model


def _plan(job: Job, k: int, model: nn.Module) -> PruningPlan:
    """The iteration's plan: measured and decided on rank 0 once, then read from plan.json."""
    path = job.folder.file(k, "plan.json")
    if not path.is_file() and job.main:
        graph = build_channel_graph(job.part(model), job.input_shape)
        result = analyze(graph, job.work.images())
        plan = decide(result, job.config.policy)
        if warning := inexact_warning(graph, plan):
            job.log.warning(f"iter {k}: {warning}")
        record = analysis_records(result, plan, _prunability(job, graph))
        atomic_write_json(job.folder.file(k, "analysis.json"), record)
        plan.save(path)
    job.dist.barrier()
    return PruningPlan.load(path)


def _iteration(
    job: Job, k: int, previous: nn.Module, baseline: nn.Module
) -> tuple[nn.Module | None, StageMetrics | None]:
    """One prune + fine-tune step; (None, None) when the plan removes nothing."""
    if job.folder.done(k):
        return _load(job, k), job.folder.finished_metrics(k)
    start = time.perf_counter()
    plan = _plan(job, k, previous)
    removed = sum(d.removed for d in plan.decisions)
    if removed == 0:
        return None, None
    images = job.work.images() if job.config.policy.compensate else None
    pruned = apply_plan(job.part(previous), plan, compensate=images)
    if job.scope:
        pruned = replace_scope(previous, job.scope, pruned)
    pruned = pruned.to(job.device)
    partial = job.folder.metrics(k)
    if partial is None or partial.val_score_pruned is None:
        partial = StageMetrics(
            iteration=k,
            stage=job.folder.stage(k).name,
            removed_channels=removed,
            val_score_pruned=job.work.score(pruned)[0],
        )
        if job.main:
            job.folder.write_metrics(partial)
    ft = job.config.finetune
    teacher = {"none": None, "baseline": baseline, "previous": previous}[ft.teacher]
    distill = (
        {"teacher": ft.teacher, "temperature": ft.temperature, "weight": ft.weight}
        if teacher is not None
        else None
    )
    state = job.folder.file(k, "train_state.pt")
    epochs = job.work.fit(k, pruned, ft.epochs, teacher, state)
    partial = dataclasses.replace(
        partial, distill=distill, epochs=tuple(epochs), seconds=time.perf_counter() - start
    )
    return _finish_stage(job, pruned, partial)


def _describe(job: Job, metrics: StageMetrics, base: Scores) -> str:
    m = metrics.scores
    pr = 100 * (reduction(base.params, m.params) or 0.0)
    fr = 100 * (reduction(base.flops, m.flops) or 0.0)
    verdict = "within tolerance" if metrics.within_tolerance else "BELOW tolerance"
    test = f", test {_score_text(job, m.test_score)}" if m.test_score is not None else ""
    return (
        f"iter {metrics.iteration}: params {m.params:,} (-{pr:.1f} %), FLOPs {m.flops:,} "
        f"(-{fr:.1f} %), {job.work.metric} {_score_text(job, m.val_score)} "
        f"({m.val_score - base.val_score:+.2f}){test}; {verdict}"
    )


def iterate(job: Job, after_baseline: Callable[[nn.Module], None] | None = None) -> None:
    """Baseline, then iterations until the tolerance, the limit or an empty plan; writes
    summary.json. `after_baseline` runs once the baseline is there (the group experiment)."""
    baseline = _baseline(job)
    if after_baseline is not None:
        after_baseline(baseline)
    base = job.folder.finished_metrics(0).scores
    limit = job.config.max_iterations
    bar = progress_bar(total=limit, desc="iterations", unit="iter", show=job.progress and job.main)
    model, stopped = baseline, "max_iterations"
    for k in range(1, limit + 1):
        new, metrics = _iteration(job, k, model, baseline)
        bar.update(1)
        if new is None or metrics is None:
            stopped = "nothing_to_prune"
            job.log.info(f"iter {k}: the policy removes no channel; stopping")
            break
        job.log.info(_describe(job, metrics, base))
        if not metrics.within_tolerance:
            stopped = "tolerance"
            break
        model = new
    bar.close()
    if job.main:
        summary = summarize(
            job.folder, job.config, stopped, metric=job.work.metric, unit=job.work.unit
        )
        job.folder.write_summary(summary)
    job.dist.barrier()
