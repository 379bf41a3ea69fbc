"""Paper A's algorithm 1, resumable: baseline, then measure -> prune -> fine-tune -> evaluate."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from prunewise.analysis import (
    Prunability,
    analyze,
    count_flops,
    count_params,
    group_experiment,
    prunability,
)
from prunewise.data import DataBundle, load_data, make_loader, sample_images
from prunewise.errors import PrunewiseError
from prunewise.graph import ChannelGraph, build_channel_graph
from prunewise.io import atomic_write_json, load_checkpoint, read_json, save_checkpoint
from prunewise.models import check_input_fits
from prunewise.models.bring import Brought, bring_model
from prunewise.pipeline.config import RunConfig, read_run_config
from prunewise.pipeline.deploy_stage import check_deploy_fits, deploy_stage
from prunewise.pipeline.dpu_stage import dpu_stage
from prunewise.pipeline.folder import RunFolder, close_log, open_log
from prunewise.pipeline.summary import layer_channels, summarize
from prunewise.prune import PruningPlan, apply_plan, decide
from prunewise.report import analysis_records, build_report
from prunewise.train import (
    DistContext,
    DistillConfig,
    TrainState,
    evaluate,
    make_train_loader,
    pick_device,
    train,
)

__all__ = ["RunResult", "prepare_run", "run_pipeline"]

GROUP_EXPERIMENT_IMAGES = 2000


@dataclass(frozen=True)
class RunResult:
    """Where the run lies, its summary, and its report."""

    run_dir: Path
    summary: dict[str, Any]
    report: Path | None


@dataclass
class _Ctx:
    config: RunConfig
    folder: RunFolder
    data: DataBundle
    loaders: dict[str, DataLoader]
    device: torch.device
    dist: DistContext
    log: logging.Logger
    input_shape: tuple[int, ...]

    @property
    def main(self) -> bool:
        return self.dist.is_main

    def meta(self, stage: str, **extra: Any) -> dict[str, Any]:
        spec = self.config.model
        return {
            "model": spec.name,
            "width": spec.width,
            "weights": spec.weights,
            "dataset": self.data.name,
            "num_classes": self.data.num_classes,
            "stage": stage,
            **extra,
        }


def _resolve_device(config: RunConfig, dist: DistContext) -> torch.device:
    device = pick_device(config.train.device)
    if dist.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    return device


def _loaders(config: RunConfig, data: DataBundle) -> dict[str, DataLoader]:
    return {
        "val": make_loader(data.val, 512, shuffle=False),
        "test": make_loader(data.test, 512, shuffle=False),
    }


def _load_model(ctx: _Ctx, iteration: int) -> nn.Module:
    ck = load_checkpoint(ctx.folder.file(iteration, "model.pt"))
    return ck.model.to(ctx.device)


def _accuracy(ctx: _Ctx, model: nn.Module) -> tuple[float, float]:
    return evaluate(model, ctx.loaders["val"], ctx.device), evaluate(
        model, ctx.loaders["test"], ctx.device
    )


def _train_cfg(ctx: _Ctx, epochs: int, seed_offset: int):
    cfg = ctx.config.train
    device = str(ctx.device)
    progress = cfg.progress and ctx.main
    return dataclasses.replace(
        cfg, epochs=epochs, seed=cfg.seed + seed_offset, device=device, progress=progress
    )


def _fit(
    ctx: _Ctx,
    iteration: int,
    model: nn.Module,
    epochs: int,
    teacher: nn.Module | None,
    desc: str,
) -> list[dict]:
    """Train with per-epoch state in the stage folder; resumes from it when present."""
    state_path = ctx.folder.file(iteration, "train_state.pt")
    resume = TrainState.load(state_path) if state_path.is_file() else None
    if resume is not None:
        ctx.log.info(f"{desc}: resuming after epoch {resume.epochs_done}/{epochs}")
    distill = None
    if teacher is not None:
        ft = ctx.config.finetune
        distill = DistillConfig(temperature=ft.temperature, weight=ft.weight)

    def on_epoch(state: TrainState) -> None:
        state.save(state_path)
        last = state.history[-1]
        val = f", val {last['val_acc']:.2f} %" if "val_acc" in last else ""
        ctx.log.info(f"{desc} epoch {state.epochs_done}/{epochs}: loss {last['loss']:.4f}{val}")

    # each stage shuffles with its own seed, far from the sampler's seed + epoch of the others
    loader = make_train_loader(
        ctx.data.train,
        ctx.config.batch_size,
        seed=ctx.config.train.seed + 1000 * iteration,
        dist=ctx.dist,
    )
    return train(
        model,
        loader,
        _train_cfg(ctx, epochs, iteration),
        val_loader=ctx.loaders["val"],
        teacher=teacher,
        distill=distill,
        resume=resume,
        on_epoch=on_epoch if ctx.main else None,
        desc=desc,
        dist=ctx.dist,
    )


def _finish_stage(
    ctx: _Ctx, iteration: int, model: nn.Module, metrics: dict[str, Any]
) -> nn.Module:
    """Write model.pt then metrics.json (done), drop the train state; reload from disk."""
    val, test = _accuracy(ctx, model)
    if iteration > 0:
        base_val = (ctx.folder.metrics(0) or {})["val_acc"]
        metrics["within_tolerance"] = bool(val >= base_val - ctx.config.tolerance)
    metrics.update(
        done=True,
        val_acc=val,
        test_acc=test,
        params=count_params(model),
        flops=count_flops(model, ctx.input_shape),
        channels=layer_channels(model),
    )
    if ctx.main:
        stage = ctx.folder.stage(iteration).name
        save_checkpoint(
            ctx.folder.file(iteration, "model.pt"),
            model,
            input_shape=ctx.input_shape,
            meta=ctx.meta(stage, val_acc=val, test_acc=test),
        )
        ctx.folder.write_metrics(iteration, metrics)
        ctx.folder.file(iteration, "train_state.pt").unlink(missing_ok=True)
    ctx.dist.barrier()
    return _load_model(ctx, iteration)


def _baseline(ctx: _Ctx) -> nn.Module:
    if ctx.folder.done(0):
        ctx.log.info("baseline: finished earlier, loaded")
        return _load_model(ctx, 0)
    start = time.perf_counter()
    spec = ctx.config.model
    metrics: dict[str, Any] = {"stage": "baseline", "iteration": 0, "done": False}
    if spec.baseline is not None:
        ck = load_checkpoint(spec.baseline)
        if ck.meta.get("num_classes", ctx.data.num_classes) != ctx.data.num_classes:
            raise PrunewiseError(
                f"baseline {spec.baseline} has {ck.meta.get('num_classes')} classes, "
                f"{ctx.data.name} has {ctx.data.num_classes}; train a baseline on this dataset"
            )
        model = ck.model.to(ctx.device)
        metrics.update(source=str(spec.baseline), epochs=[])
        ctx.log.info(f"baseline: loaded {spec.baseline}")
    elif spec.weights is not None:
        model = _bring(ctx.config, ctx.data).model.to(ctx.device)
        metrics.update(source=str(spec.weights), epochs=[])
        ctx.log.info(f"baseline: {spec.name} with the weights of {spec.weights}")
    else:
        torch.manual_seed(ctx.config.train.seed)
        model = _bring(ctx.config, ctx.data).model.to(ctx.device)
        build_channel_graph(model, ctx.input_shape)
        epochs = ctx.config.train.epochs
        metrics["epochs"] = _fit(ctx, 0, model, epochs, None, "baseline")
    metrics["seconds"] = time.perf_counter() - start
    model = _finish_stage(ctx, 0, model, metrics)
    if ctx.main:
        result = analyze(model, _analysis_images(ctx), input_shape=ctx.input_shape)
        prunable = _prunability(ctx, result.graph)
        ctx.log.info(f"baseline: {prunable.summary()}")
        if prunable.warning():
            ctx.log.warning(f"baseline: {prunable.warning()}")
        record = analysis_records(result, None, prunable)
        atomic_write_json(ctx.folder.file(0, "analysis.json"), record)
    m = ctx.folder.metrics(0) or {}
    ctx.log.info(
        f"baseline: params {m.get('params'):,}, FLOPs {m.get('flops'):,}, "
        f"val {m.get('val_acc'):.2f} %, test {m.get('test_acc'):.2f} %"
    )
    ctx.dist.barrier()
    return model


def _prunability(ctx: _Ctx, graph: ChannelGraph) -> Prunability:
    policy = ctx.config.policy
    return prunability(graph, prune_tied=policy.prune_tied, importance=policy.importance)


def _analysis_images(ctx: _Ctx) -> torch.Tensor:
    n = min(ctx.config.analysis_images, len(ctx.data.val))
    return sample_images(ctx.data.val, n, ctx.config.train.seed).to(ctx.device)


def _group_experiment(ctx: _Ctx, baseline: nn.Module) -> None:
    g = ctx.config.group_experiment
    if g == 0 or ctx.folder.group_experiment.is_file():
        return
    if ctx.main:
        n = min(GROUP_EXPERIMENT_IMAGES, len(ctx.data.val))
        loader = make_loader(Subset(ctx.data.val, range(n)), 512, shuffle=False)
        ctx.log.info(f"group experiment (paper A fig. 20): G = {g} on {n} validation images")
        record = group_experiment(
            baseline,
            loader,
            groups=g,
            device=ctx.device,
            input_shape=ctx.input_shape,
            progress=ctx.config.train.progress,
        )
        record.update(split="val", images=n)
        atomic_write_json(ctx.folder.group_experiment, record)
    ctx.dist.barrier()


def _plan(ctx: _Ctx, k: int, model: nn.Module) -> PruningPlan:
    """The iteration's plan: measured and decided on rank 0 once, then read from plan.json."""
    path = ctx.folder.file(k, "plan.json")
    if not path.is_file() and ctx.main:
        graph = build_channel_graph(model, ctx.input_shape)
        result = analyze(graph, _analysis_images(ctx))
        plan = decide(result, ctx.config.policy)
        record = analysis_records(result, plan, _prunability(ctx, graph))
        atomic_write_json(ctx.folder.file(k, "analysis.json"), record)
        plan.save(path)
    ctx.dist.barrier()
    return PruningPlan.load(path)


def _iteration(
    ctx: _Ctx, k: int, previous: nn.Module, baseline: nn.Module
) -> tuple[nn.Module | None, dict[str, Any]]:
    """One prune + fine-tune step; (None, metrics) when the plan removes nothing."""
    if ctx.folder.done(k):
        return _load_model(ctx, k), ctx.folder.metrics(k) or {}
    start = time.perf_counter()
    plan = _plan(ctx, k, previous)
    removed = sum(d.removed for d in plan.decisions)
    if removed == 0:
        return None, {"removed": 0}
    pruned = apply_plan(previous, plan).to(ctx.device)
    partial = ctx.folder.metrics(k) or {}
    if "val_acc_pruned" not in partial:
        partial = {
            "stage": ctx.folder.stage(k).name,
            "iteration": k,
            "done": False,
            "removed_channels": removed,
            "val_acc_pruned": evaluate(pruned, ctx.loaders["val"], ctx.device),
        }
        if ctx.main:
            ctx.folder.write_metrics(k, partial)
    ft = ctx.config.finetune
    teacher = {"none": None, "baseline": baseline, "previous": previous}[ft.teacher]
    partial["distill"] = (
        {"teacher": ft.teacher, "temperature": ft.temperature, "weight": ft.weight}
        if teacher is not None
        else None
    )
    partial["epochs"] = _fit(ctx, k, pruned, ft.epochs, teacher, f"iter {k} fine-tune")
    partial["seconds"] = time.perf_counter() - start
    model = _finish_stage(ctx, k, pruned, partial)
    return model, partial


def _describe(k: int, m: dict[str, Any], base: dict[str, Any]) -> str:
    pr = 100 * (1 - m["params"] / base["params"])
    fr = 100 * (1 - m["flops"] / base["flops"])
    verdict = "within tolerance" if m.get("within_tolerance") else "BELOW tolerance"
    return (
        f"iter {k}: params {m['params']:,} (-{pr:.1f} %), FLOPs {m['flops']:,} (-{fr:.1f} %), "
        f"val {m['val_acc']:.2f} % ({m['val_acc'] - base['val_acc']:+.2f}), "
        f"test {m['test_acc']:.2f} %; {verdict}"
    )


@dataclass(frozen=True)
class _Prepared:
    """What a run takes from outside, loaded and checked before it writes anything."""

    data: DataBundle
    device: torch.device


def _bring(config: RunConfig, data: DataBundle, *, meta: bool = False) -> Brought:
    """The model of the config for this data (on the meta device when `meta` and nothing is
    to be loaded into it: shapes only, nothing allocated)."""
    spec = config.model
    where = torch.device("meta") if meta and spec.weights is None else contextlib.nullcontext()
    with where:
        return bring_model(
            spec.name,
            num_classes=data.num_classes,
            in_channels=data.input_shape[0],
            width=spec.width,
            model_args=spec.args,
            weights=spec.weights,
            trust_pickle=spec.trust_pickle,
        )


def _check_classes(model: nn.Module, shape: tuple[int, ...], classes: int, what: str) -> None:
    """A classifier's output is one score per class of the data."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros((1, *shape), device=device))
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] != classes:
        raise PrunewiseError(
            f"{what} gives {out.shape[1]} scores per image, the data have {classes} classes; "
            f"build it for them (--model-args '{{\"num_classes\": {classes}}}') or use the "
            "data it was made for"
        )


def _check_model(config: RunConfig, data: DataBundle) -> DataBundle:
    """The baseline checkpoint or the model (and its weights) fits the data; nothing is
    trained. Returns the data, loaded again with the model's input channels when the config
    leaves them open and the model takes others (weights trained on grayscale images)."""
    spec, shape = config.model, tuple(data.input_shape)
    if spec.baseline is not None:
        ck = load_checkpoint(spec.baseline)
        classes = ck.meta.get("num_classes", data.num_classes)
        if classes != data.num_classes:
            raise PrunewiseError(
                f"baseline {spec.baseline} has {classes} classes, {data.name} has "
                f"{data.num_classes}; train a baseline on this dataset"
            )
        check_input_fits(ck.model, shape, hint=f"; the {data.name} images are {shape}")
        return data
    brought = _bring(config, data, meta=True)
    channels = brought.in_channels
    if channels in (1, 3) and channels != shape[0] and config.data.channels is None:
        data = load_data(dataclasses.replace(config.data, channels=channels))
        shape = tuple(data.input_shape)
    check_input_fits(brought.model, shape, hint=f"; the {data.name} images are {shape}")
    _check_classes(brought.model, shape, data.num_classes, spec.name)
    return data


def prepare_run(config: RunConfig, dist: DistContext | None = None) -> _Prepared:
    """Check everything a run needs before it writes a file: the device, the data (loaded),
    the model or baseline checkpoint, the deploy stage's images and the DPU board.

    Raises PrunewiseError naming the first problem.
    """
    dist = dist or DistContext()
    device = _resolve_device(config, dist)
    data = load_data(config.data)
    if len(data.train) < 2 or len(data.val) < 1:
        raise PrunewiseError(
            f"the {data.name} data give {len(data.train)} training and {len(data.val)} "
            "validation images; a run needs at least 2 and 1 (check --limit and --val-size)"
        )
    check_deploy_fits(config, data)
    if config.dpu.enabled:
        config.dpu.resolve()
    data = _check_model(config, data)
    return _Prepared(data, device)


def run_pipeline(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    dist: DistContext | None = None,
    report: bool = True,
    progress: bool | None = None,
) -> RunResult:
    """Run (or, with `resume`, continue) paper A's iterative prune + fine-tune in folder `out`.

    Everything that can be checked is checked before the first file is written, so a refused
    run leaves nothing behind. While it works, the folder is locked (a second process gets an
    error); an attempt that fails writes failed.json, which `resume` clears.
    `progress` (when given) overrides the config's progress bars, also for a resumed run.
    """
    folder = RunFolder(Path(out))
    dist = dist or DistContext()
    if resume:
        folder.check_existing()
        config = read_run_config(folder.config)
    if progress is not None:
        train = dataclasses.replace(config.train, progress=progress)
        config = dataclasses.replace(config, train=train)
    prepared = prepare_run(config, dist)
    with ExitStack() as stack:
        problem = None
        if dist.is_main:  # rank 0 alone claims the folder; every rank learns the verdict
            try:
                if not resume:
                    folder.check_new()
                stack.enter_context(folder.lock())
                if resume:
                    folder.failure.unlink(missing_ok=True)
                else:
                    folder.check_new()  # again, under the lock: another process may have won
                    atomic_write_json(folder.config, config.to_dict())
            except PrunewiseError as exc:
                problem = str(exc)
        problem = dist.broadcast_object(problem)
        if problem is not None:
            raise PrunewiseError(problem)
        log = open_log(folder, main=dist.is_main)
        try:
            return _run(config, folder, prepared, dist, log, resume=resume, report=report)
        except BaseException as exc:
            if dist.is_main:
                folder.mark_failed(exc)
            raise
        finally:
            close_log(log)


def _run(
    config: RunConfig,
    folder: RunFolder,
    prepared: _Prepared,
    dist: DistContext,
    log: logging.Logger,
    *,
    resume: bool,
    report: bool,
) -> RunResult:
    log.info(f"{'resuming' if resume else 'starting'} run in {folder.root}")
    data = prepared.data
    ctx = _Ctx(
        config=config,
        folder=folder,
        data=data,
        loaders=_loaders(config, data),
        device=prepared.device,
        dist=dist,
        log=log,
        input_shape=tuple(data.input_shape),
    )
    if not folder.summary.is_file():
        _iterate(ctx)
    if ctx.main:
        deploy_stage(folder, config, data, log, progress=config.train.progress)
        dpu_stage(folder, config, log)
    dist.barrier()
    summary = read_json(folder.summary)
    report_path = None
    if report and dist.is_main:
        report_path = build_report(folder.root)
        log.info(f"wrote {report_path} and report.md")
    dist.barrier()
    return RunResult(folder.root, summary, report_path)


def _iterate(ctx: _Ctx) -> None:
    baseline = _baseline(ctx)
    _group_experiment(ctx, baseline)
    base = ctx.folder.metrics(0) or {}
    limit = ctx.config.max_iterations
    bar = tqdm(
        total=limit,
        desc="iterations",
        unit="iter",
        disable=not (ctx.config.train.progress and ctx.main),
    )
    model, stopped = baseline, "max_iterations"
    for k in range(1, limit + 1):
        new, metrics = _iteration(ctx, k, model, baseline)
        bar.update(1)
        if new is None:
            stopped = "nothing_to_prune"
            ctx.log.info(f"iter {k}: the policy removes no channel; stopping")
            break
        ctx.log.info(_describe(k, metrics, base))
        if not metrics.get("within_tolerance"):
            stopped = "tolerance"
            break
        model = new
    bar.close()
    if ctx.main:
        atomic_write_json(ctx.folder.summary, summarize(ctx.folder, ctx.config, stopped))
    ctx.dist.barrier()
