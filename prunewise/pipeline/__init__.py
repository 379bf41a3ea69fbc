"""`prunewise run`: the iterative prune + fine-tune job, its run folder and its summary."""

from prunewise.pipeline.config import (
    RUN_FORMAT,
    TEACHERS,
    FinetuneConfig,
    ModelSpec,
    RunConfig,
    load_toml,
    merge_options,
    read_run_config,
)
from prunewise.pipeline.folder import RunFolder, stage_name
from prunewise.pipeline.run import RunResult, prepare_run, run_pipeline
from prunewise.pipeline.summary import kept_iteration, layer_channels, summarize

__all__ = [
    "RUN_FORMAT",
    "TEACHERS",
    "FinetuneConfig",
    "ModelSpec",
    "RunConfig",
    "RunFolder",
    "RunResult",
    "kept_iteration",
    "layer_channels",
    "load_toml",
    "merge_options",
    "prepare_run",
    "read_run_config",
    "run_pipeline",
    "stage_name",
    "summarize",
]
