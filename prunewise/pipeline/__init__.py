"""The iterative prune + fine-tune job (`prunewise run`, and `prune_iteratively` with your own
fine-tune and metric), its run folder and its summary."""

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
from prunewise.pipeline.custom import (
    LOOP_FORMAT,
    Finetune,
    FinetuneSession,
    LoopConfig,
    prune_iteratively,
)
from prunewise.pipeline.inputs import InputsConfig, Loaded, load_inputs
from prunewise.pipeline.run import RunResult, prepare_run, run_pipeline
from prunewise.pipeline.step import analyse_step, prune_step, train_step
from prunewise.pipeline.summary import layer_channels, summarize
from prunewise.records import RunFolder, kept_iteration, stage_name

__all__ = [
    "LOOP_FORMAT",
    "RUN_FORMAT",
    "TEACHERS",
    "Finetune",
    "FinetuneConfig",
    "FinetuneSession",
    "InputsConfig",
    "Loaded",
    "LoopConfig",
    "ModelSpec",
    "RunConfig",
    "RunFolder",
    "RunResult",
    "analyse_step",
    "kept_iteration",
    "layer_channels",
    "load_inputs",
    "load_toml",
    "merge_options",
    "prepare_run",
    "prune_iteratively",
    "prune_step",
    "read_run_config",
    "run_pipeline",
    "stage_name",
    "summarize",
    "train_step",
]
