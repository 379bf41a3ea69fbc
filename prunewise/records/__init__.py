"""Run records: the typed contents of a run folder (docs/run-folder.md): a stage's metrics,
the summary, a pruning step, a deployed model, a DPU profile; the folder that reads and
writes them; and the shapes they are checked against when read."""

from prunewise.records.deploy import Accuracy, DeployRecord, LatencyRow, Parity
from prunewise.records.dpu import DpuProfile, Subgraph
from prunewise.records.folder import RunFolder, close_log, open_log, read_checked, stage_name
from prunewise.records.run import (
    LOOP_FORMAT,
    RUN_FORMAT,
    STOP_REASONS,
    SUMMARY_FORMAT,
    IterationRow,
    PruneStep,
    RecordError,
    Scores,
    StageMetrics,
    Summary,
    chance_warning,
    epoch_record,
    epoch_score,
    kept_iteration,
    reduction,
    resume_advice,
    scores_meta,
    summarize_stages,
)

__all__ = [
    "LOOP_FORMAT",
    "RUN_FORMAT",
    "STOP_REASONS",
    "SUMMARY_FORMAT",
    "Accuracy",
    "DeployRecord",
    "DpuProfile",
    "IterationRow",
    "LatencyRow",
    "Parity",
    "PruneStep",
    "RecordError",
    "RunFolder",
    "Scores",
    "StageMetrics",
    "Subgraph",
    "Summary",
    "chance_warning",
    "close_log",
    "epoch_record",
    "epoch_score",
    "kept_iteration",
    "open_log",
    "read_checked",
    "reduction",
    "resume_advice",
    "scores_meta",
    "stage_name",
    "summarize_stages",
]
