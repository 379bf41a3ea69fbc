"""The report as a format-free document: sections of paragraphs, tables and figures.

`build_document` turns the records of a run folder into it; `prunewise.report.html` and
`prunewise.report.markdown` render it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prunewise.analysis.prunability import percent
from prunewise.errors import PrunewiseError
from prunewise.records import Summary, chance_warning
from prunewise.records.deploy import TOP1
from prunewise.report import plots
from prunewise.report.blocks import Details, Document, Figure, Section, Table, plain_table
from prunewise.report.deployment import deployment_rows, speedup_rows
from prunewise.report.dpu import dpu_section
from prunewise.report.run import (
    STATUS_TEXT,
    STOP_TEXT,
    RunRecords,
    StageRow,
    config_highlights,
    flatten,
    kept_iteration,
    metric_of,
    missing_items,
    stage_rows,
    summary_record,
    tolerance,
)
from prunewise.report.tables import group_rows, layer_rows

__all__ = ["Details", "Document", "Figure", "Section", "Table", "build_document"]


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return fmt.format(v)


def _mega(v: Any) -> str:
    return "–" if v is None else f"{v / 1e6:.3f} M"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def _delta(v: Any) -> str:
    return "–" if v is None else f"{v:+.2f}"


def _stage_name(k: int) -> str:
    return "baseline" if k == 0 else f"iter {k}"


def _figure(title: str, caption: str, draw: Callable[[Any], bytes], record: Any) -> Figure | str:
    """The figure, or a paragraph saying why it could not be drawn."""
    try:
        return Figure(title, caption, draw(record))
    except (PrunewiseError, KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return f"The figure “{title}” could not be drawn from the records: {exc}."


def _seconds(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.1f} h"


def _short(run: RunRecords) -> str:
    """The score's name in table headers: 'acc' for accuracy, else the metric's own."""
    metric, _ = metric_of(run)
    return "acc" if metric == "accuracy" else metric


def _score(r: StageRow, name: str) -> Any:
    """A field of the row's scores (params, flops, val_score, test_score); None when unscored."""
    return getattr(r.scores, name) if r.scores is not None else None


def _iteration_table(run: RunRecords) -> Table:
    m = _short(run)
    headers = (
        "stage", "params", "params red.", "FLOPs (MACs)", "FLOPs red.", f"val {m} pruned",
        f"val {m}", "Δ val", f"test {m}", "Δ test", "within tol.", "time", "status",
    )  # fmt: skip
    rows, classes = [], []
    _, final = kept_iteration(run)
    stages = stage_rows(run)
    for r in stages:
        done = r.status == "done"
        within = r.within_tolerance
        if r.kept:
            status, cls = "kept" if final else "kept so far", "kept"
        elif not done:
            status, cls = STATUS_TEXT[r.status], "pending"
        elif within is False:
            status, cls = "below tolerance", "bad"
        else:
            status, cls = "done", ""
        rows.append(
            (
                _stage_name(r.iteration),
                _num(_score(r, "params")),
                _pct(r.params_reduction),
                _mega(_score(r, "flops")),
                _pct(r.flops_reduction),
                _num(r.val_score_pruned),
                _num(_score(r, "val_score")),
                _delta(r.val_delta),
                _num(_score(r, "test_score")),
                _delta(r.test_delta),
                "–" if r.iteration == 0 or within is None else _num(bool(within)),
                _seconds(r.seconds),
                status,
            )
        )
        classes.append(cls)
    if all(_score(r, "test_score") is None for r in stages):  # no test split: no columns
        keep = [i for i, h in enumerate(headers) if i not in (8, 9)]
        headers = tuple(headers[i] for i in keep)
        rows = [tuple(row[i] for i in keep) for row in rows]
    numeric = (False, *[True] * (len(headers) - 2), False)
    return Table(headers, tuple(rows), tuple(classes), numeric)


def _channels_table(summary: Summary) -> Table:
    channels = summary.channels
    stages = max(len(v) for v in channels.values())
    iters = [r.iteration for r in summary.stages][:stages]
    iters += list(range(len(iters), stages))
    kept = summary.kept
    col = iters.index(kept) if kept in iters else stages - 1
    headers = ("layer", *(_stage_name(k) for k in iters), f"{_stage_name(iters[col])} / baseline")
    rows = []
    for name, counts in channels.items():
        cells = [str(c) for c in counts] + ["–"] * (stages - len(counts))
        ok = len(counts) > col and counts[0]
        share = f"{100 * counts[col] / counts[0]:.0f} %" if ok else "–"
        rows.append((name, *cells, share))
    return Table(headers, tuple(rows), (), (False, *[True] * (stages + 1)))


def _status(run: RunRecords) -> str:
    kept, _ = kept_iteration(run)
    if run.summary is not None:
        stop = STOP_TEXT.get(run.summary.stopped or "", str(run.summary.stopped))
        stop = stop.format(metric=metric_of(run)[0])
        return f"Run finished: stopped because {stop}. Kept: {_stage_name(kept)}."
    done = sum(1 for s in run.iterations if s.status == "done")
    so_far = f" Kept so far: {_stage_name(kept)}." if kept is not None else ""
    if (run.root / "summary.json").is_file():  # there, but unreadable
        return (
            f"summary.json is damaged, so how the run ended is unknown: {done} pruning "
            f"iteration(s) finished.{so_far} The stages below are read from their own files."
        )
    return (
        f"Run in progress (or stopped before the end): {done} pruning iteration(s) finished, "
        f"no summary.json yet.{so_far}"
    )


def _setup(run: RunRecords) -> Section:
    cfg = flatten({k: v for k, v in run.config.items() if k != "format"})
    if (run.config.get("model") or {}).get("baseline"):  # the checkpoint is the model
        unread = {f"model.{k}" for k in ("name", "width", "args", "weights", "new_head")}
        unread.add("model.trust_pickle")
        cfg = [(k, "(not read: the baseline checkpoint)" if k in unread else v) for k, v in cfg]
    blocks: list[Any] = [
        Table(("setting", "value"), tuple(config_highlights(run))),
        Details("Full configuration (config.json)", (Table(("key", "value"), tuple(cfg)),)),
    ]
    return Section("setup", "Set-up", tuple(blocks))


def _results(run: RunRecords, summary: Summary | None, draw: bool) -> Section:
    tol = tolerance(run)
    tol_text = "?" if tol is None else f"{tol:g}"
    metric, unit = metric_of(run)
    points = f"{metric} points" if unit == "%" else f"{metric}, {unit or 'its units'}"
    blocks: list[Any] = [
        "Params: parameter elements. FLOPs: multiply-accumulates per image at the input size "
        f"(fvcore convention). Reductions and Δ ({points}) are against the baseline; "
        f"“val {_short(run)} pruned” is right after pruning, before fine-tuning. An iteration "
        f"is within tolerance when its validation {metric} is at least the baseline's minus "
        f"{tol_text}; the run keeps the last iteration within it (paper A, algorithm 1).",
        _iteration_table(run),
    ]
    if warning := chance_warning(run.baseline.metrics):
        blocks.insert(0, f"Warning: {warning}.")
    if draw and summary is not None:
        blocks.append(
            _figure(
                f"{metric[:1].upper()}{metric[1:]} against FLOPs kept",
                f"Validation (and test, where known) {metric} of each stage against the FLOPs "
                "it keeps; the ring marks the kept iteration, the dotted line the tolerance.",
                plots.accuracy_flops_plot,
                summary,
            )
        )
        blocks.append(
            _figure(
                "Parameters and FLOPs per stage",
                "Bars labelled with the reduction from the baseline (paper A tables 1-10).",
                plots.size_plot,
                summary,
            )
        )
    return Section("iterations", "Per-iteration results", tuple(blocks))


def _channels(summary: Summary | None, draw: bool) -> Section | None:
    if summary is None or not summary.channels:
        return None
    blocks: list[Any] = []
    if draw:
        blocks.append(
            _figure(
                "Channels per layer",
                "Output channels of every convolution and linear layer, baseline and after "
                "each finished iteration.",
                plots.channels_plot,
                summary,
            )
        )
    blocks.append(_channels_table(summary))
    return Section("channels", "Channels per layer", tuple(blocks))


def _prunability(p: Any) -> list[str]:
    """What the policy may prune in the baseline and what holds the rest whole."""
    if not isinstance(p, Mapping):
        return []
    held = "; ".join(f"{b['reason']}: {b['channels']:,}" for b in p["blockers"][:5])
    text = (
        f"What the policy may prune: {percent(p['channel_share'])} of the output channels of "
        f"convolutions and linear layers ({p['prunable_channels']:,} of {p['channels']:,}); "
        f"{percent(p['flops_share'])} of the FLOPs involve a prunable channel (an upper bound on "
        "what pruning can remove)."
    )
    out = [text + (f" Output channels held whole, by reason: {held}." if held else "")]
    if p.get("warning"):
        out.append(f"Warning: {p['warning']}.")
    return out


def _analysis(run: RunRecords, draw: bool) -> Section | None:
    record = run.baseline.analysis
    if record is None:
        return None
    blocks: list[Any] = [
        f"Input sparsity S = 1 − nonzero / elements of the tensor entering each layer (eq. 1), "
        f"over {record.get('images', '?')} validation images; CV = std / mean (eq. 2). "
        "Zeros are counted per input channel, so each channel group gets the sparsity of its "
        "own channels: for a plain chain conv → BN → ReLU → conv it is eq. 1 of the consumer; "
        "a group read through a concatenation gets its own slice; a group feeding several "
        "consumers takes the mean over them."
    ]
    if draw:
        blocks.append(
            _figure(
                "Input sparsity and its CV per layer",
                "Mean ± standard deviation over the images (paper A figs. 2-9) and the "
                "coefficient of variation (fig. 10).",
                plots.sparsity_plot,
                record,
            )
        )
        blocks.append(
            _figure(
                "Density of |gamma| per BatchNorm group",
                "Channels are pruned from the lowest |gamma| (paper A figs. 12-18); groups "
                "marked fixed are never pruned. Each panel's x axis fits its own values.",
                plots.gamma_density_plot,
                record,
            )
        )
    blocks += _prunability(record.get("prunability"))
    if record.get("layers"):
        blocks.append(plain_table(*layer_rows(record)))
    if record.get("groups"):
        blocks.append(Details("Per channel group (baseline)", (plain_table(*group_rows(record)),)))
    return Section("sparsity", "Input sparsity and |gamma| of the baseline", tuple(blocks))


def _group_experiment(run: RunRecords, draw: bool) -> Section | None:
    rec = run.group_experiment
    if rec is None:
        return None
    acc = rec.get("accuracy") or []
    text = (
        f"Every prunable group's channels sorted by |gamma| and split into G = {rec.get('G')} "
        "parts; part g removed from all groups at once, evaluated without fine-tuning on "
        f"{rec.get('images', '?')} {rec.get('split', 'val')} images (paper A fig. 20). "
        f"Baseline {_num(rec.get('baseline_acc'))} %"
    )
    if acc:
        worst = min(range(len(acc)), key=acc.__getitem__)
        text += f"; lowest {_num(acc[worst])} % at g = {worst + 1}."
    blocks: list[Any] = [text]
    if draw:
        blocks.append(
            _figure(
                "Group-wise |gamma| experiment",
                "Accuracy with part g of every prunable group removed; the dashed line is the "
                "unpruned accuracy.",
                plots.group_experiment_plot,
                rec,
            )
        )
    return Section("group-experiment", "Group-wise |gamma| experiment", tuple(blocks))


def _decisions(run: RunRecords) -> Section | None:
    blocks = [
        Details(f"iter {s.iteration}", (plain_table(*group_rows(s.analysis)),))
        for s in run.iterations
        if s.analysis and s.analysis.get("groups")
    ]
    if not blocks:
        return None
    intro = (
        "Per iteration, the analysis of the model it starts from: sparsity S, |gamma|, the "
        "pruning ratio P of eq. 4 and the channels kept, per prunable group."
    )
    return Section("decisions", "Pruning decisions per iteration", (intro, *blocks))


def _deploy_label(stage: str, kept: int | None) -> str:
    if stage == "baseline":
        return "baseline (unpruned)"
    k = int(stage.removeprefix("iter_"))
    return f"iter {k}" + (" (kept)" if k == kept else "")


def _deployment(run: RunRecords) -> Section | None:
    if not run.deployment:
        return None
    kept, _ = kept_iteration(run)
    variants = {_deploy_label(s, kept): r for s, r in run.deployment.items()}
    first = next(iter(run.deployment.values()))
    int8 = first.config.get("int8") or {}
    pow2 = ", power-of-two scales with symmetric activations" if int8.get("power_of_two") else ""
    ort_backend = int8.get("backend") == "onnxruntime"
    exported = (
        "float, and INT8 QDQ written by ONNX Runtime's quantizer (quantize_static)"
        if ort_backend
        else "float and INT8 QDQ"
    )
    reference = (
        "the INT8 file's own QDQ graph run unfused (prunewise's fake-quantized model, "
        "calibrated alike, gives the PyTorch INT8 accuracy)"
        if ort_backend
        else "the fake-quantized PyTorch model"
    )
    score = "Accuracy" if first.metric == TOP1 else "Mean IoU (%)"
    same, units = first.agreement_terms
    blocks: list[Any] = [
        "Each model is deployed as paper A deploys it (BN folded into the convolutions, "
        "per-channel symmetric INT8 weights, per-tensor INT8 activations calibrated on "
        f"{int8.get('calibration_images', '?')} validation images with the "
        f"{int8.get('calibration', '?')} method{pow2}), exported to ONNX ({exported}) "
        f"and run in ONNX Runtime on the CPU. {score} on the whole test set. “ORT = PyTorch”: "
        f"float logits within 1e-4 relative and the same INT8 {same} as {reference} on at "
        f"least 99 % of the test {units}.",
        plain_table(*deployment_rows(variants)),
    ]
    headers, rows = speedup_rows(variants, _deploy_label("baseline", kept))
    if rows:
        blocks.append(
            "Median ONNX Runtime latency after warm-up, by intra-op threads and batch size (the "
            "CPU counterpart of paper A's 1 and 2 DPU threads, table 12); speed-up against the "
            "unpruned float model at the same threads and batch."
        )
        blocks.append(plain_table(headers, rows))
    return Section("deployment", "Deployment: INT8 and ONNX Runtime", tuple(blocks))


def _dpu(run: RunRecords, figures: bool) -> Section | None:
    if "baseline" not in run.dpu:
        return None
    kept, _ = kept_iteration(run)
    labels = {s: _deploy_label(s, kept) for s in run.dpu}
    shown = {labels["baseline"]: run.dpu["baseline"]}
    if kept:
        kept_stage = f"iter_{kept:02d}"
        if kept_stage in run.dpu:
            shown[labels[kept_stage]] = run.dpu[kept_stage]
    every = {labels[s]: r for s, r in run.dpu.items()}
    return dpu_section(shown, fps_of=every, figures=figures)


def build_document(run: RunRecords, *, figures: bool = True) -> Document:
    """The report of a run; `figures=False` skips drawing (for the Markdown version)."""
    summary = summary_record(run)
    sections: list[Section | None] = [_setup(run)]
    missing = missing_items(run)
    if missing:
        rows = tuple(tuple(m.split(": ", 1)) if ": " in m else (m, "") for m in missing)
        sections.append(Section("missing", "Not available yet", (Table(("what", "state"), rows),)))
    sections += [
        _results(run, summary, figures),
        _channels(summary, figures),
        _analysis(run, figures),
        _group_experiment(run, figures),
        _deployment(run),
        _dpu(run, figures),
        _decisions(run),
    ]
    names = [h[1] for h in config_highlights(run) if h[0] in ("model", "dataset")]
    title = "prunewise run report" + (f": {' on '.join(names)}" if names else "")
    return Document(title, _status(run), tuple(s for s in sections if s is not None))
