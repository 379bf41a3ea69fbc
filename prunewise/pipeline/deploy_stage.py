"""The last stage of a run: deploy the baseline and the kept model (INT8, ONNX, latency)."""

from __future__ import annotations

import logging

from prunewise.data import DataBundle, make_loader, sample_images
from prunewise.errors import PrunewiseError
from prunewise.export import MIOU, TOP1, deploy, parity_problems
from prunewise.io import load_checkpoint, read_json
from prunewise.pipeline.config import RunConfig
from prunewise.quant.config import calibration_shortfall
from prunewise.records import RunFolder, Summary, stage_name
from prunewise.records.deploy import DeployRecord

__all__ = ["check_deploy_fits", "deploy_stage", "deployed_stages"]


def deployed_stages(summary: Summary) -> list[int]:
    """The stages a run deploys: the baseline (0) and the kept iteration, if pruning kept one."""
    return [0, summary.kept] if summary.kept else [0]


def _describe(k: int, rec: DeployRecord) -> str:
    acc, parity = rec.accuracy, rec.parity
    error = parity.int8_float_rel_error
    return (
        f"deploy {stage_name(k)}: ORT float {rec.score_label} {acc.ort_float:.2f} %, INT8 "
        f"({(rec.config.get('int8') or {}).get('backend', 'prunewise')}) {acc.ort_int8:.2f} % "
        f"({-(acc.int8_cost or 0.0):+.2f} points), {rec.float_bytes:,} -> {rec.int8_bytes:,} "
        f"bytes, INT8 logits {100 * (error or 0.0):.1f} % from float; checks passed: "
        f"{'yes' if parity.ok else 'NO'}"
    )


def check_deploy_fits(config: RunConfig, data: DataBundle) -> None:
    """Refuse, before any training, a deploy stage the data cannot feed."""
    n = config.deploy.int8.calibration_images
    if config.deploy.enabled and n > len(data.val):
        capped = len(data.val) < config.data.val_size
        more = (
            "add training images (at most a fifth of them is held out)"
            if capped
            else "hold out more (--val-size)"
        )
        more += ", or skip the deploy stage (--no-deploy)"
        raise PrunewiseError(calibration_shortfall(n, len(data.val), more))


def deploy_stage(
    folder: RunFolder, config: RunConfig, data: DataBundle, log: logging.Logger, *, progress: bool
) -> dict[str, DeployRecord]:
    """Deploy each stage that has no deploy.json yet; returns every stage's record by name."""
    cfg = config.deploy
    records: dict[str, DeployRecord] = {}
    if not cfg.enabled:
        return records
    check_deploy_fits(config, data)
    images = None
    loader = make_loader(data.test, 512, shuffle=False)
    for k in deployed_stages(folder.read_summary()):
        target = folder.deploy_dir(k)
        done = target / "deploy.json"
        if done.is_file():
            records[stage_name(k)] = DeployRecord.from_dict(read_json(done))
            continue
        log.info(f"deploy {stage_name(k)}: fold BN, INT8 calibration, ONNX export and checks")
        if images is None:
            images = sample_images(data.val, cfg.int8.calibration_images, config.train.seed)
        model = load_checkpoint(folder.file(k, "model.pt")).model
        metric = MIOU if config.task == "segmentation" else TOP1
        try:
            records[stage_name(k)] = rec = deploy(
                model, images, loader, target, cfg, progress=progress, metric=metric,
                labels=data.class_names if metric == TOP1 else None,
            )  # fmt: skip
        except PrunewiseError as exc:
            raise PrunewiseError(
                f"deploy {stage_name(k)}: {exc}. A resumed run keeps its options; its trained "
                "stages are saved, so to deploy with other options run `prunewise deploy "
                f"--checkpoint {folder.file(k, 'model.pt')} --out DIR` with them (or start a new "
                "run)"
            ) from exc
        log.info(_describe(k, rec))
        for problem in parity_problems(rec.parity):
            log.warning(f"deploy {stage_name(k)}: warning: {problem}")
    return records
