"""After the deploy stage: the DPU model of the baseline and every finished iteration."""

from __future__ import annotations

import logging
from typing import Any

from prunewise.hw.dpu.summary import dpu_summary
from prunewise.io import load_checkpoint
from prunewise.pipeline.config import RunConfig
from prunewise.pipeline.job import stage
from prunewise.records import RunFolder, stage_name
from prunewise.records.dpu import DpuProfile

__all__ = ["dpu_stage"]


def dpu_stage(folder: RunFolder, config: RunConfig, log: logging.Logger) -> dict[str, DpuProfile]:
    """Write dpu/<stage>.json for each stage with a model and none yet; all records by stage."""
    cfg = config.dpu
    records: dict[str, DpuProfile] = {}
    if not cfg.enabled:
        return records
    board = cfg.resolve()
    k = 0
    while folder.file(k, "model.pt").is_file():

        def make(k: int = k) -> dict[str, Any]:
            ck = load_checkpoint(folder.file(k, "model.pt"))
            rec = dpu_summary(ck.model, ck.input_shape, board, cfg.threads)
            fps = ", ".join(f"{v:.1f} fps at {n} thread(s)" for n, v in rec.fps.items())
            log.info(f"DPU model {stage_name(k)} on {board.name}: {fps}")
            return rec.to_dict()

        path = folder.root / "dpu" / f"{stage_name(k)}.json"
        records[stage_name(k)] = DpuProfile.from_dict(stage(path, make))
        k += 1
    return records
