"""Run records: the typed contents of a run folder (docs/run-folder.md), the folder that is
their only reader and writer, and the shapes they are checked against when read."""

from prunewise.records.folder import RunFolder, close_log, open_log, stage_name
from prunewise.records.run import (
    STOP_REASONS,
    SUMMARY_FORMAT,
    IterationRow,
    PruneStep,
    RecordError,
    Scores,
    StageMetrics,
    Summary,
    epoch_record,
    epoch_score,
    kept_iteration,
    reduction,
    scores_meta,
    summarize_stages,
)

__all__ = [
    "STOP_REASONS",
    "SUMMARY_FORMAT",
    "IterationRow",
    "PruneStep",
    "RecordError",
    "RunFolder",
    "Scores",
    "StageMetrics",
    "Summary",
    "close_log",
    "epoch_record",
    "epoch_score",
    "kept_iteration",
    "open_log",
    "reduction",
    "scores_meta",
    "stage_name",
    "summarize_stages",
]
