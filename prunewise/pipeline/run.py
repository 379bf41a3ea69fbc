"""`prunewise run`: check what a run needs, then paper A's loop (pipeline/loop.py) with
prunewise's classification work, the deploy and the DPU stage, and the report."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from prunewise.analysis import group_experiment
from prunewise.data import DataBundle, DataConfig, load_data, load_segmentation, make_loader
from prunewise.errors import PrunewiseError
from prunewise.io import atomic_write_json, load_checkpoint, read_json
from prunewise.models import check_input_fits
from prunewise.models.sources import parse_source
from prunewise.pipeline.config import RunConfig, read_run_config
from prunewise.pipeline.deploy_stage import check_deploy_fits, deploy_stage
from prunewise.pipeline.dpu_stage import dpu_stage
from prunewise.pipeline.inputs import check_class_names, check_output, check_weight_classes
from prunewise.pipeline.job import RUN_JOB, check_job_folder, claim_folder, stage
from prunewise.pipeline.loop import Job, iterate
from prunewise.pipeline.work import ClassifierWork, SegmentationWork, bring_configured
from prunewise.records import RunFolder, Summary
from prunewise.report import build_report
from prunewise.train import DistContext, pick_device

__all__ = ["RunResult", "prepare_run", "run_pipeline"]

GROUP_EXPERIMENT_IMAGES = 2000


@dataclass(frozen=True)
class RunResult:
    """Where the run lies, its summary, and its report."""

    run_dir: Path
    summary: Summary
    report: Path | None


@dataclass(frozen=True)
class _Prepared:
    """What a run takes from outside, loaded and checked before it writes anything."""

    data: DataBundle
    device: torch.device
    origin: dict[str, Any]  # the model's name, width and weights, as checkpoints record them


def _resolve_device(config: RunConfig, dist: DistContext) -> torch.device:
    device = pick_device(config.train.device)
    if dist.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    return device


def _group_experiment(job: Job, work: ClassifierWork, baseline: nn.Module) -> None:
    """Paper A fig. 20 on the baseline, once (group_experiment.json)."""
    g = work.config.group_experiment
    if g == 0:
        return

    def make() -> dict[str, Any]:
        n = min(GROUP_EXPERIMENT_IMAGES, len(work.data.val))
        loader = make_loader(Subset(work.data.val, range(n)), 512, shuffle=False)
        job.log.info(f"group experiment (paper A fig. 20): G = {g} on {n} validation images")
        record = group_experiment(
            baseline,
            loader,
            groups=g,
            device=job.device,
            input_shape=job.input_shape,
            progress=job.progress,
        )
        return {**record, "split": "val", "images": n}

    stage(job.folder.group_experiment, make, dist=job.dist)


def _load_data(config: RunConfig, data: DataConfig) -> DataBundle:
    return load_segmentation(data) if config.task == "segmentation" else load_data(data)


def _check_model(
    config: RunConfig, data: DataBundle, finished: Path | None
) -> tuple[DataBundle, dict[str, Any]]:
    """The baseline (the `finished` stage-0 checkpoint of a resumed run, the baseline
    checkpoint, or the model with its weights) fits the data; nothing is trained. Returns the
    data, loaded again with the model's input channels when the config leaves them open and
    the model takes others (weights trained on grayscale images), and the model's origin (name,
    width, weights: a checkpoint's own, as it records them)."""
    spec = config.model
    origin = {"model": spec.name, "width": spec.width, "weights": spec.weights}
    if finished is not None or spec.baseline is not None:
        path = finished if finished is not None else Path(spec.baseline)
        ck = load_checkpoint(path)
        classes = ck.meta.get("num_classes", data.num_classes)
        if classes != data.num_classes:
            raise PrunewiseError(
                f"baseline {path} has {classes} classes, {data.name} has "
                f"{data.num_classes}; train a baseline on this dataset"
            )
        if config.task == "classification":
            check_class_names(ck.meta.get("class_names"), data.class_names, path)
        model, channels, what = ck.model, ck.input_shape[0], str(path)
        origin = {key: ck.meta.get(key) for key in origin}
        origin["model"] = origin["model"] or f"checkpoint {path}"
    else:
        brought = bring_configured(config, data, meta=True)
        model, channels, what = brought.model, brought.in_channels, spec.name
        if config.task == "classification":
            check_weight_classes(brought, data.class_names, new_head=spec.new_head)
    if channels in (1, 3) and channels != data.input_shape[0] and config.data.channels is None:
        data = _load_data(config, dataclasses.replace(config.data, channels=channels))
    shape = tuple(data.input_shape)
    out = check_input_fits(model, shape, hint=f"; the {data.name} images are {shape}")
    check_output(out, data.num_classes, task=config.task, what=what, size=shape[1:])
    return data, origin


def prepare_run(
    config: RunConfig, dist: DistContext | None = None, folder: RunFolder | None = None
) -> _Prepared:
    """Check everything a run needs before it writes a file: the device, the data (loaded),
    the model or baseline checkpoint, the deploy stage's images and the DPU board. For a run
    resumed in `folder` whose baseline is finished, its checkpoint there stands for the model
    (the model's file, weights or baseline checkpoint may have moved since).

    Raises PrunewiseError naming the first problem.
    """
    dist = dist or DistContext()
    device = _resolve_device(config, dist)
    data = _load_data(config, config.data)
    if len(data.train) < 2 or len(data.val) < 1:
        raise PrunewiseError(
            f"the {data.name} data give {len(data.train)} training and {len(data.val)} "
            "validation images; a run needs at least 2 and 1 (check --limit and --val-size)"
        )
    check_deploy_fits(config, data)
    if config.dpu.enabled:
        config.dpu.resolve()
    finished = folder.file(0, "model.pt") if folder is not None and folder.done(0) else None
    data, origin = _check_model(config, data, finished)
    return _Prepared(data, device, origin)


def run_pipeline(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    dist: DistContext | None = None,
    report: bool = True,
    progress: bool | None = None,
    named_code: str | None = None,
) -> RunResult:
    """Run (or, with `resume`, continue) paper A's iterative prune + fine-tune in folder `out`.

    A resumed run whose baseline is not finished rebuilds its model from the source config.json
    names; when that runs code (a file or module source, or weights unpickled with
    trust_pickle), the caller must name the same source again (`named_code`, `--model`): a run
    folder alone never makes prunewise import code. Raises PrunewiseError otherwise.

    A segmentation run (`config.task`) is scored by mIoU, deployed too, and has no group
    experiment (it scores the classes of whole images); its config.json says so.
    Everything that can be checked is checked before the first file is written, so a refused
    run leaves nothing behind. While it works, the folder is locked (a second process gets an
    error); an attempt that fails writes failed.json, which `resume` clears.
    `progress` (when given) overrides the config's progress bars, also for a resumed run.
    """
    folder = RunFolder(Path(out))
    dist = dist or DistContext()
    if resume:
        check_job_folder(folder, RUN_JOB, resume=True)
        config = read_run_config(folder.config)
        _check_named_code(config, folder, named_code)
    else:
        config = config.anchored()  # relative paths stored absolute: resumable from anywhere
    if progress is not None:
        train = dataclasses.replace(config.train, progress=progress)
        config = dataclasses.replace(config, train=train)
    if config.task == "segmentation":  # the group experiment scores classes of whole images
        config = dataclasses.replace(config, group_experiment=0)
    prepared = prepare_run(config, dist, folder if resume else None)
    started_on = {**prepared.data.fingerprint(), "processes": dist.world_size}
    if resume:
        _check_same_data(folder, started_on)
    with claim_folder(folder, config.to_dict(), resume=resume, dist=dist) as log:
        if dist.is_main and not folder.data.is_file():
            atomic_write_json(folder.data, started_on)
        return _run(config, folder, prepared, dist, log, resume=resume, report=report)


def _check_named_code(config: RunConfig, folder: RunFolder, named: str | None) -> None:
    """Refuse to resume a run whose model would be rebuilt by running code its folder names,
    unless the caller names that code again (`run_pipeline`)."""
    spec = config.model
    if folder.done(0) or spec.baseline is not None:
        return  # the baseline checkpoint stands for the model: no code is imported
    runs_code = parse_source(spec.name).kind in ("file", "module") or spec.trust_pickle
    if runs_code and named != spec.name:
        pickled = " (its weights are unpickled: --trust-pickle)" if spec.trust_pickle else ""
        flags = f"--model {spec.name}{pickled}"
        raise PrunewiseError(
            f"{folder.root}'s baseline is not finished, so resuming it rebuilds the model from "
            f"{spec.name}, running that code (config.json names it); name it again to allow "
            f"that: prunewise run --resume {folder.root} {flags}"
        )


def _check_same_data(folder: RunFolder, now: dict[str, Any]) -> None:
    """Refuse to resume a run on other data or another number of processes than it started
    with (data.json: DataBundle.fingerprint and the processes, whose count sets the batch;
    a folder of an older prunewise has none and is not checked)."""
    if not folder.data.is_file():
        return
    was = read_json(folder.data)
    was.setdefault("processes", now["processes"])  # written before it was recorded
    if was == now:
        return
    keys = ("name", "classes", "images", "processes")
    changes = [f"{k} {was.get(k)} then, {now[k]} now" for k in keys if was.get(k) != now[k]]
    changes = changes or ["the same number of images, other files"]
    raise PrunewiseError(
        f"{folder.root} was started on other data or processes ({'; '.join(changes)}): resume "
        "it as it started (the same data folder, --limit, --val-size and number of processes: "
        "--batch-size is per process), or start a new run"
    )


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
    if config.task == "segmentation":
        log.info("segmentation: scored by mIoU (also when deployed); no group experiment")
    data = prepared.data
    log.info(f"data: {data.describe()}")
    kind = SegmentationWork if config.task == "segmentation" else ClassifierWork
    work = kind(config, data, prepared.device, dist, log)
    job = Job(
        config=config,
        folder=folder,
        work=work,
        device=prepared.device,
        log=log,
        input_shape=tuple(data.input_shape),
        progress=config.train.progress,
        meta={
            **prepared.origin,
            "dataset": data.name,
            "num_classes": data.num_classes,
            "class_names": list(data.class_names),
        },
        dist=dist,
    )
    if not folder.summary.is_file():
        iterate(job, lambda baseline: _group_experiment(job, work, baseline))
    if dist.is_main:
        deploy_stage(folder, config, data, log, progress=config.train.progress)
        dpu_stage(folder, config, log)
    dist.barrier()
    summary = folder.read_summary()
    report_path = None
    if report and dist.is_main:
        report_path = build_report(folder.root)
        log.info(f"wrote {report_path} and report.md")
    dist.barrier()
    return RunResult(folder.root, summary, report_path)
