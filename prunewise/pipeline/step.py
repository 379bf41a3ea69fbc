"""One layer-wise refined pruning step (`prunewise analyze`, `prunewise prune`): measure the
input sparsity and |gamma| of the loaded model, decide the plan (paper A eq. 4), apply it,
and save the pruned model, the plan, the analysis and the step's summary."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunewise.analysis import ModelAnalysis, Prunability, analyze, count_flops, count_params
from prunewise.analysis import prunability as measure_prunability
from prunewise.data import make_loader, sample_images
from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.io import atomic_write_json, save_checkpoint
from prunewise.models.bring import input_channels
from prunewise.models.scoped import LIBRARY_KINDS, save_scoped_checkpoint
from prunewise.models.sources import parse_source
from prunewise.pipeline.config import RunConfig
from prunewise.pipeline.inputs import InputsConfig, Loaded
from prunewise.prune import (
    PruningPlan,
    RefinedConfig,
    apply_plan,
    check_gamma,
    decide,
    inexact_warning,
    replace_scope,
)
from prunewise.records import PruneStep, Scores, epoch_score, scores_meta
from prunewise.records.deploy import TOP1
from prunewise.report import analysis_records
from prunewise.settings import spec_of
from prunewise.train import TrainConfig, TrainState, evaluate, pick_device, train

__all__ = ["StepAnalysis", "StepResult", "analyse_step", "prune_step", "train_step"]


@dataclass(frozen=True)
class StepAnalysis:
    """The measurement (`ModelAnalysis`) on `images` (the sparsity images, on the device), the
    plan decided from it, the analysis.json record and what the policy may prune at all."""

    result: ModelAnalysis
    plan: PruningPlan
    record: dict[str, Any]
    prunability: Prunability
    images: torch.Tensor

    def warning(self) -> str | None:
        """What to know before trusting the plan: the groups held whole
        (`Prunability.warning`), and a plan that removes nothing since no prunable group's
        consumers read a zero (paper A's eq. 4 sets a group's ratio from that input sparsity:
        activations without exact zeros, as GELU, SiLU and hard-swish, or a pooling between
        the activation and the consumer leave it nothing), and pruned groups whose channels an
        operation mixes (`prunewise.prune.inexact_warning`)."""
        active = [d for d in self.plan.decisions if not d.reason.startswith("fixed")]
        measured = [d.sparsity for d in active if d.sparsity is not None]
        idle = not any(d.removed for d in self.plan.decisions)
        zeros = (
            f"the plan removes nothing: the consumers of the groups it may prune read "
            f"{max(measured):.3f} zeros at most (paper A's eq. 4 sets the ratios from them; "
            "activations without exact zeros, as GELU, SiLU or hard-swish, or a pooling before "
            "the consumer give none); prune such a model at a fixed ratio: --ratio R "
            "(RefinedConfig.fixed_ratio)"
            if idle and measured and max(measured) < 1e-3
            else None
        )
        inexact = inexact_warning(self.result.graph, self.plan)
        return "; ".join(w for w in (self.prunability.warning(), zeros, inexact) if w) or None


@dataclass(frozen=True)
class StepResult:
    """A finished step: before/after (`PruneStep`, also in summary.json), the analysis when
    the plan was decided here (None: a saved plan was applied), and the files written."""

    step: PruneStep
    analysis: StepAnalysis | None
    files: str


def analyse_step(
    loaded: Loaded, policy: RefinedConfig, images: int, config: InputsConfig
) -> StepAnalysis:
    """Measure `images` seeded validation images through the loaded model (its scope) and
    decide the plan. Raises PrunewiseError when there is nothing to rank by |gamma| or too
    few images."""
    spec_of(RunConfig, "analysis_images").check(images, "analysis_images (--images)")
    available = len(loaded.data.val)
    if images > available:
        cap = " (capped by --limit)" if config.limit is not None else ""
        raise PrunewiseError(
            f"--images {images} is more than the {available} validation images{cap}; "
            f"pass --images {available} or fewer"
        )
    graph = build_channel_graph(loaded.part, loaded.input_shape)
    if policy.importance == "bn-gamma":  # before measuring
        try:
            check_gamma(graph)
        except PrunewiseError as exc:
            name = loaded.meta.get("model") or config.checkpoint
            raise PrunewiseError(f"model {name}: {exc}") from exc
    batch = _sparsity_images(loaded, images, config)
    result = analyze(graph, batch)
    plan = decide(result, policy)
    found = measure_prunability(graph, prune_tied=policy.prune_tied, importance=policy.importance)
    return StepAnalysis(result, plan, analysis_records(result, plan, found), found, batch)


def _sparsity_images(loaded: Loaded, images: int, config: InputsConfig) -> torch.Tensor:
    """`images` seeded validation images on the device, checked against the model's input."""
    batch = sample_images(loaded.data.val, images, config.seed)
    if tuple(batch.shape[1:]) != tuple(loaded.input_shape):
        raise PrunewiseError(
            f"the data's images are {tuple(batch.shape[1:])}, the model is traced for "
            f"{loaded.input_shape}; drop --input-size or pick matching data"
        )
    return batch.to(pick_device(config.device))


def _scores(loaded: Loaded, model: nn.Module, part: nn.Module, score: bool) -> Scores:
    sizes = Scores(count_params(model), count_flops(part, loaded.input_shape))
    if not score:
        return sizes
    val, test = (loaded.score(model, split) for split in (loaded.data.val, loaded.data.test))
    return dataclasses.replace(sizes, val_score=val, test_score=test)


def prune_step(
    loaded: Loaded,
    config: InputsConfig,
    out: str | Path,
    *,
    policy: RefinedConfig,
    images: int,
    plan: PruningPlan | None = None,
    score: bool = False,
) -> StepResult:
    """Decide the plan (or apply the saved `plan`), prune, and write into `out`: pruned.pt
    (with a scope: scope.pt, and pruned.pt when the model can be rebuilt from its source),
    plan.json, analysis.json (when decided here) and summary.json. `score` measures val and
    test accuracy before and after (no fine-tuning)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrunewiseError(f"--out {out} is a file; prune writes a folder, give a folder name")
    if loaded.scope and score:
        raise PrunewiseError(
            "--evaluate is not available with --scope: prunewise scores only a model it traces "
            "whole; drop --evaluate and score the whole pruned model (pruned.pt, "
            "prunewise.models.load_scoped_checkpoint) with your own evaluation, or prune the "
            "whole model without --scope where it traces"
        )
    found = None
    if plan is not None:
        graph = build_channel_graph(loaded.part, loaded.input_shape)
        plan.check_fits({g.id: g.size for g in graph.groups}, graph.input_shape)
    else:
        found = analyse_step(loaded, policy, images, config)
        graph, plan = found.result.graph, found.plan
    batch = None
    if policy.compensate:  # the sparsity images, as the loop uses them
        batch = found.images if found is not None else _sparsity_images(loaded, images, config)
    pruned = apply_plan(graph, plan, compensate=batch)
    whole = replace_scope(loaded.model, loaded.scope, pruned) if loaded.scope else pruned
    before = _scores(loaded, loaded.model, loaded.part, score)
    after = _scores(loaded, whole, pruned, score)
    meta = {**loaded.meta, "pruned_from": config.checkpoint, "plan": plan.policy}
    if score or loaded.metric != TOP1:
        meta.update(scores_meta(after.val_score, after.test_score, loaded.metric))
    plan.save(out / "plan.json")
    if found is not None:
        atomic_write_json(out / "analysis.json", {"model": loaded.meta, **found.record})
    files = _save_pruned(loaded, config, out, pruned, whole, meta)
    step = PruneStep(before, after, plan.policy, loaded.scope)
    atomic_write_json(out / "summary.json", step.to_dict())
    return StepResult(step, found, files)


def _save_pruned(
    loaded: Loaded,
    config: InputsConfig,
    out: Path,
    pruned: nn.Module,
    whole: nn.Module,
    meta: dict[str, Any],
) -> str:
    """pruned.pt (the whole model), and with a scope scope.pt (the pruned part alone)."""
    shape, scope = loaded.input_shape, loaded.scope
    if not scope:
        save_checkpoint(out / "pruned.pt", pruned, input_shape=shape, meta=meta)
        return f"pruned model: {out / 'pruned.pt'}"
    save_checkpoint(out / "scope.pt", pruned, input_shape=shape, meta=meta)
    text = f"pruned {scope}: {out / 'scope.pt'}"
    name = str(loaded.meta.get("model"))
    if config.checkpoint or parse_source(name).kind not in LIBRARY_KINDS:
        why = "it came from a checkpoint" if config.checkpoint else f"{name} is your code"
        return text + (
            f" (no whole-model file: {why}, which a prunewise checkpoint never names; put "
            "scope.pt back into your model with prunewise.prune.replace_scope)"
        )
    source = {
        "name": name,
        "num_classes": None,  # built with its builder's own (load_inputs, with a scope)
        "in_channels": input_channels(loaded.model),
        "width": loaded.meta.get("width"),
        "model_args": config.model_args,
    }
    save_scoped_checkpoint(
        out / "pruned.pt", whole, scope, source=source, input_shape=shape, meta=meta
    )
    return text + f"; whole model: {out / 'pruned.pt'} (prunewise.models.load_scoped_checkpoint)"


def train_step(
    loaded: Loaded,
    config: InputsConfig,
    train_config: TrainConfig,
    out: str | Path,
    *,
    on_epoch: Callable[[TrainState], None] | None = None,
) -> Scores:
    """Train the loaded model (a baseline) and save it with its scores, training settings and
    history as a checkpoint at `out`; returns its scores (val of the last epoch, test)."""
    if Path(out).is_dir():
        raise PrunewiseError(
            f"--out {out} is a directory; give the checkpoint's file name, e.g. "
            f"{Path(out) / 'baseline.pt'}"
        )
    build_channel_graph(loaded.model, loaded.input_shape)  # refuse an untraceable model first
    data = loaded.data
    train_loader = make_loader(data.train, config.batch_size, shuffle=True, seed=config.seed)
    val_loader = make_loader(data.val, 512, shuffle=False)
    history = train(
        loaded.model, train_loader, train_config, val_loader=val_loader, on_epoch=on_epoch
    )
    test = evaluate(loaded.model, make_loader(data.test, 512, shuffle=False))
    val = epoch_score(history[-1]) if history else None
    if val is None:
        val = evaluate(loaded.model, val_loader)
    meta = {
        **loaded.meta,
        **scores_meta(val, test),
        "train": dataclasses.asdict(train_config),
        "history": history,
        **({"limit": config.limit} if config.limit is not None else {}),
    }
    save_checkpoint(out, loaded.model, input_shape=loaded.input_shape, meta=meta)
    return Scores(val_score=val, test_score=test)
