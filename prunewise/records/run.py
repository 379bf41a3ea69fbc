"""Typed records of a run: what a stage measured (metrics.json), the per-iteration summary
(summary.json) and an epoch of training, with the rule that picks the kept iteration.

These dataclasses are what the loop writes and what the report and the command line read;
the JSON keys of docs/run-folder.md are spelled here and nowhere else. A record is checked
against its shape when read (`RecordError` names the first bad key), and a summary carries its
format, so a folder written by an older prunewise (no format key) still loads and one written
by a newer one is refused by name.

A "score" is the run's metric in its unit: top-1 accuracy in % for `prunewise run`, the
user's metric for `prune_iteratively` (higher is better). Its JSON key is `val_acc` /
`test_acc` whatever the metric, as run folders have always had it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prunewise.records.deploy import MIOU, TOP1
from prunewise.records.schema import NUMBER, Map, Maybe, RecordError, require_shape

__all__ = [
    "LOOP_FORMAT",
    "METRICS",
    "METRICS_DONE",
    "PRUNE_STEP_FORMAT",
    "RUN_FORMAT",
    "STOP_REASONS",
    "SUMMARY",
    "SUMMARY_FORMAT",
    "IterationRow",
    "PruneStep",
    "RecordError",
    "Scores",
    "StageMetrics",
    "Summary",
    "chance_warning",
    "epoch_record",
    "epoch_score",
    "kept_iteration",
    "reduction",
    "resume_advice",
    "scores_meta",
    "summarize_stages",
]

RUN_FORMAT = "prunewise-run/1"
"""The `format` of config.json in the folder of a `prunewise run` (RunConfig)."""

LOOP_FORMAT = "prunewise-loop/1"
"""The `format` of config.json in the folder of a `prune_iteratively` job (LoopConfig)."""


def resume_advice(config_format: object, root: object) -> str:
    """How the job whose config.json has `config_format` continues in folder `root`: the
    command for a run (also an old config without a format), the call for a Python job."""
    if config_format == LOOP_FORMAT:
        return f"`prune_iteratively(..., out={str(root)!r}, resume=True)`"
    return f"`prunewise run --resume {root}`"


SUMMARY_FORMAT = "prunewise-summary/1"
"""summary.json's format; a summary without one was written before records had versions."""

STOP_REASONS = ("tolerance", "max_iterations", "nothing_to_prune")
"""Why the loop ended: a score below tolerance, the iteration limit, or an empty plan."""

_N = Maybe(NUMBER)
METRICS = {
    "done?": bool,
    "iteration": int,  # every version writes it: a record without it is not a stage's
    "params?": int,
    "flops?": int,
    "val_acc?": _N,
    "test_acc?": _N,
    "val_acc_pruned?": _N,
    "within_tolerance?": Maybe(bool),
    "seconds?": _N,
    "channels?": Map(int),
    "distill?": Maybe({"teacher?": str, "temperature?": NUMBER, "weight?": NUMBER}),
    "epochs?": [dict],
}
"""metrics.json of a stage (a finished one also needs `METRICS_DONE`)."""

METRICS_DONE = {"params": int, "flops": int, "val_acc": NUMBER, "test_acc": _N}

_ROW = {
    "iteration": int,
    "params": int,
    "flops": int,
    "val_acc": NUMBER,
    "test_acc": _N,
    "params_reduction?": _N,
    "flops_reduction?": _N,
    "val_acc_pruned?": _N,
    "within_tolerance?": Maybe(bool),
}
SUMMARY = {
    "format?": str,
    "baseline": {"params": int, "flops": int, "val_acc": NUMBER, "test_acc": _N},
    "iterations": [_ROW],
    "kept": int,
    "stopped": str,
    "tolerance?": _N,
    "distill?": Maybe(str),
    "channels?": Map([int]),
    "metric?": str,
    "unit?": str,
}
"""summary.json."""


def reduction(before: float | None, after: float | None) -> float | None:
    """1 - after / before (the share removed); None when either is unknown, 0 when before is
    0."""
    if before is None or after is None:
        return None
    return 1.0 - after / before if before else 0.0


@dataclass(frozen=True)
class Scores:
    """Size and score of one model: params, FLOPs (multiply-accumulates per input) and the
    validation and test score; None where not measured (a sparsify job scores without
    counting; a test score is None without a test split)."""

    params: int | None = None
    flops: int | None = None
    val_score: float | None = None
    test_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """{"params", "flops", "val_acc", "test_acc"}; params and FLOPs only when counted."""
        sizes = {"params": self.params, "flops": self.flops}
        return {
            **{k: v for k, v in sizes.items() if v is not None},
            "val_acc": self.val_score,
            "test_acc": self.test_score,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scores:
        """Read `to_dict`'s keys (others are ignored)."""
        return cls(data.get("params"), data.get("flops"), data.get("val_acc"), data.get("test_acc"))


PRUNE_STEP_FORMAT = "prunewise-prune-step/1"
"""summary.json of `prunewise prune` (one step, not a run)."""


@dataclass(frozen=True)
class PruneStep:
    """One pruning step (`prunewise prune`): the model before and after (scores when it was
    evaluated), the plan's policy and the scope pruned (None: the whole model)."""

    before: Scores
    after: Scores
    policy: Mapping[str, Any] = field(default_factory=dict)
    scope: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The step's summary.json object, with its format."""
        return {
            "format": PRUNE_STEP_FORMAT,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "plan": dict(self.policy),
            "scope": self.scope,
        }


def scores_meta(val: float | None, test: float | None, metric: str = TOP1) -> dict[str, Any]:
    """The scores as a checkpoint's meta holds them: a classifier's top-1 (`prunewise
    train`), or a segmentation model's mIoU with the metric named (how `prunewise evaluate`,
    `deploy` and `prune` know the task of a checkpoint)."""
    if metric == MIOU:
        return {"metric": MIOU, "val_miou": val, "test_miou": test}
    return {"val_acc": val, "test_acc": test}


def epoch_record(
    epoch: int, loss: float, lr: float, val_score: float | None, seconds: float
) -> dict[str, Any]:
    """One epoch of the trainer's history (kept as plain data in train_state.pt)."""
    out: dict[str, Any] = {"epoch": epoch, "loss": loss, "lr": lr}
    if val_score is not None:
        out["val_acc"] = val_score
    out["seconds"] = seconds
    return out


def epoch_score(record: Mapping[str, Any]) -> float | None:
    """The validation score of an `epoch_record` (None when the epoch was not scored)."""
    return record.get("val_acc")


_JSON_KEYS = {
    "val_score": "val_acc",
    "test_score": "test_acc",
    "val_score_pruned": "val_acc_pruned",
}


@dataclass(frozen=True)
class StageMetrics:
    """metrics.json of one stage (iteration 0 = the baseline).

    `val_score_pruned` is the score right after pruning, before fine-tuning; `within_tolerance`
    whether the fine-tuned score is at least the baseline's minus the tolerance (paper A's stop
    rule); `channels` the output channels of every convolution and linear layer; `epochs` the
    training history as the trainer (or the user's fine-tune) recorded it; `extra` any other
    key, kept as found."""

    iteration: int
    stage: str = ""
    done: bool = False
    params: int | None = None
    flops: int | None = None
    val_score: float | None = None
    test_score: float | None = None
    val_score_pruned: float | None = None
    within_tolerance: bool | None = None
    removed_channels: int | None = None
    seconds: float | None = None
    source: str | None = None
    channels: Mapping[str, int] = field(default_factory=dict)
    distill: Mapping[str, Any] | None = None
    epochs: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scores(self) -> Scores:
        """Params, FLOPs and scores of a finished stage."""
        if not self.done or self.params is None or self.flops is None or self.val_score is None:
            raise RecordError(f"stage {self.stage or self.iteration} is not finished")
        return Scores(self.params, self.flops, self.val_score, self.test_score)

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json object (unset optional keys left out)."""
        out: dict[str, Any] = {"stage": self.stage, "iteration": self.iteration, "done": self.done}
        for f in dataclasses.fields(self):
            if f.name in ("stage", "iteration", "done", "extra"):
                continue
            value = getattr(self, f.name)
            key = _JSON_KEYS.get(f.name, f.name)
            if f.name == "epochs":
                out[key] = [dict(e) for e in value]
            elif f.name == "channels":
                if value:
                    out[key] = dict(value)
            elif f.name == "distill" or value is not None or (self.done and key == "test_acc"):
                out[key] = dict(value) if isinstance(value, Mapping) else value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageMetrics:
        """Read a metrics.json object; RecordError when it does not have its shape."""
        require_shape(data, METRICS, "metrics.json")
        if data.get("done"):
            require_shape(data, METRICS_DONE, "metrics.json")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        by_key = {_JSON_KEYS.get(n, n): n for n in names}
        kwargs: dict[str, Any] = {"iteration": data.get("iteration", 0)}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in by_key:
                kwargs[by_key[key]] = value
            else:
                extra[key] = value
        kwargs["epochs"] = tuple(kwargs.get("epochs") or ())
        kwargs["channels"] = dict(kwargs.get("channels") or {})
        return cls(**kwargs, extra=extra)


def chance_warning(metrics: StageMetrics | None) -> str | None:
    """A sentence when the baseline scores under 1.5 x what guessing scores (metrics.json
    "chance": a classifier's 100 / classes, a segmentation model's mIoU of the most frequent
    class everywhere): what pruning removes from an untrained model, and its deltas, mean
    little. None otherwise (also for a metric of the user's own, which has no "chance")."""
    chance = metrics.extra.get("chance") if metrics is not None else None
    val = metrics.val_score if metrics is not None else None
    if not isinstance(chance, int | float) or val is None or val > 1.5 * chance:
        return None
    given = metrics.source is not None and not metrics.epochs  # --baseline or --weights
    advice = (
        f"train the one given ({metrics.source}) first or give a trained one"
        if given
        else "train it longer (--epochs) or start from a trained one (--baseline, --weights)"
    )
    return (
        f"the baseline scores {val:.1f} % on validation, near the {chance:.1f} % of guessing: "
        f"it is not trained yet, so what pruning removes and the accuracy deltas mean little; "
        f"{advice}"
    )


@dataclass(frozen=True)
class IterationRow:
    """One pruning iteration of the summary: its size and scores, the share of the baseline's
    params and FLOPs removed, and whether it stayed within tolerance."""

    iteration: int
    scores: Scores
    params_reduction: float | None = None
    flops_reduction: float | None = None
    val_score_pruned: float | None = None
    within_tolerance: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """A row of summary.json's "iterations"."""
        return {
            "iteration": self.iteration,
            **self.scores.to_dict(),
            "params_reduction": self.params_reduction,
            "flops_reduction": self.flops_reduction,
            "val_acc_pruned": self.val_score_pruned,
            "within_tolerance": self.within_tolerance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IterationRow:
        """Read `to_dict`'s object."""
        return cls(
            data["iteration"],
            Scores.from_dict(data),
            data.get("params_reduction"),
            data.get("flops_reduction"),
            data.get("val_acc_pruned"),
            data.get("within_tolerance"),
        )


def kept_iteration(rows: Sequence[IterationRow]) -> int:
    """The last iteration within tolerance before the first that is not (0: the baseline) —
    paper A's stop rule (docs/run.md): the kept model is the last one that held."""
    kept = 0
    for r in rows:
        if not r.within_tolerance:
            break
        kept = r.iteration
    return kept


@dataclass(frozen=True)
class Summary:
    """summary.json: the baseline, every finished iteration, the kept one and why the loop
    stopped (None: the loop still runs, the kept iteration is provisional); `channels` maps a
    layer to its output channels at each stage; `metric`/`unit` name the score."""

    baseline: Scores
    iterations: tuple[IterationRow, ...]
    kept: int
    stopped: str | None
    tolerance: float | None = None
    distill: str | None = None
    channels: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    metric: str = "accuracy"
    unit: str = "%"

    def __post_init__(self) -> None:
        if self.stopped is not None and self.stopped not in STOP_REASONS:
            raise RecordError(f"stopped must be one of {STOP_REASONS}, got {self.stopped!r}")

    @property
    def stages(self) -> tuple[IterationRow, ...]:
        """The baseline (iteration 0, no reductions) then every iteration."""
        return (IterationRow(0, self.baseline, 0.0, 0.0), *self.iterations)

    def to_dict(self) -> dict[str, Any]:
        """The summary.json object, with its format."""
        return {
            "format": SUMMARY_FORMAT,
            "baseline": self.baseline.to_dict(),
            "iterations": [r.to_dict() for r in self.iterations],
            "kept": self.kept,
            "stopped": self.stopped,
            "tolerance": self.tolerance,
            "distill": self.distill,
            "channels": {k: list(v) for k, v in self.channels.items()},
            "metric": self.metric,
            "unit": self.unit,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        """Read a summary.json object (with or without a format); RecordError when it does
        not have its shape or is of another format."""
        require_shape(data, SUMMARY, "summary.json")
        found = data.get("format", SUMMARY_FORMAT)
        if found != SUMMARY_FORMAT:
            raise RecordError(
                f"summary.json is of format {found!r}, this prunewise reads {SUMMARY_FORMAT!r}; "
                "read it with the prunewise that wrote it"
            )
        return cls(
            baseline=Scores.from_dict(data["baseline"]),
            iterations=tuple(IterationRow.from_dict(r) for r in data["iterations"]),
            kept=data["kept"],
            stopped=data["stopped"],
            tolerance=data.get("tolerance"),
            distill=data.get("distill"),
            channels={k: tuple(v) for k, v in (data.get("channels") or {}).items()},
            metric=data.get("metric") or "accuracy",
            unit=data.get("unit", "%"),
        )


def summarize_stages(
    baseline: StageMetrics,
    iterations: Sequence[StageMetrics],
    *,
    stopped: str | None,
    tolerance: float | None,
    distill: str | None = None,
    metric: str = "accuracy",
    unit: str = "%",
) -> Summary:
    """The summary of a finished baseline and finished iterations (in order)."""
    base = baseline.scores
    rows = tuple(
        IterationRow(
            m.iteration,
            m.scores,
            reduction(base.params, m.params),
            reduction(base.flops, m.flops),
            m.val_score_pruned,
            bool(m.within_tolerance),
        )
        for m in iterations
    )
    channels: dict[str, list[int]] = {name: [n] for name, n in baseline.channels.items()}
    for m in iterations:
        for name, n in m.channels.items():
            channels.setdefault(name, []).append(n)
    return Summary(
        baseline=base,
        iterations=rows,
        kept=kept_iteration(rows),
        stopped=stopped,
        tolerance=tolerance,
        distill=distill,
        channels={k: tuple(v) for k, v in channels.items()},
        metric=metric,
        unit=unit,
    )
