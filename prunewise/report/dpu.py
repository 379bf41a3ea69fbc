"""DPU model in reports: paper A's per-subgraph tables (12-13) and five-index plots (25-26)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunewise.hw.dpu.fit import FitReport
from prunewise.hw.dpu.summary import INDEXES, compare_dpu
from prunewise.records.dpu import DpuProfile
from prunewise.report.blocks import Figure, Section, Table, plain_table
from prunewise.report.plots import BAD_COLOR, OK_COLOR, _figure, _layer_ticks, _png

__all__ = [
    "dpu_fps_rows", "dpu_plot", "dpu_section", "dpu_subgraph_rows", "dpu_text", "fit_text",
]  # fmt: skip

SUBGRAPH_HEADERS = ["subgraph", "kind", "GOP", "ms", "GOP/s", "MB", "GB/s", "bound"]


def dpu_subgraph_rows(summary: DpuProfile) -> list[list[Any]]:
    """Paper A's table 12: one row per subgraph with the five indexes and what bounds it."""
    return [[r.name, r.kind, r.gop, r.ms, r.gops, r.mb, r.gbps, r.bound] for r in summary.subgraphs]


def dpu_compare_rows(before: DpuProfile, after: DpuProfile) -> list[list[Any]]:
    """Paper A's table 13: per subgraph, before -> after and the improvement."""
    old = {r.name: r for r in before.subgraphs}
    cmp = {c.name: c for c in compare_dpu(before, after).subgraphs}
    rows = []
    for r in after.subgraphs:
        o, c = old.get(r.name), cmp.get(r.name)
        if o is None or c is None:
            continue
        rows.append(
            [r.name, o.gop, r.gop, o.ms, r.ms, c.speedup, o.gops, r.gops, o.mb, r.mb]
        )  # fmt: skip
    return rows


COMPARE_HEADERS = ["subgraph", "GOP before", "GOP after", "ms before", "ms after", "speed-up",
                   "GOP/s before", "GOP/s after", "MB before", "MB after"]  # fmt: skip


def dpu_fps_rows(summaries: Mapping[str, DpuProfile]) -> list[list[Any]]:
    """Per model: GOP, DPU ms, fps per thread count, and its fps over the first model's at the
    same thread count (none for the first model itself)."""
    rows, first = [], None
    for label, s in summaries.items():
        for n, value in s.fps.items():
            base = first.fps.get(n) if first is not None else None
            rows.append([label, s.gop, s.dpu_ms, n, value, value / base if base else None])
        first = first or s
    return rows


FPS_HEADERS = ["model", "GOP", "DPU ms (1 core)", "threads", "fps", "speed-up vs first"]


def dpu_plot(summaries: Mapping[str, DpuProfile]) -> bytes:
    """The five indexes per subgraph (paper A's figs. 25-26), one bar per model."""
    labels = list(summaries)
    names = [r.name for r in next(iter(summaries.values())).subgraphs]
    fig = _figure(max(7.0, 0.45 * len(names) + 2), 2.0 * len(INDEXES) + 0.8)
    width = 0.8 / len(labels)
    colors = [OK_COLOR, BAD_COLOR, "#2ca02c", "#9467bd"]
    for i, (key, title) in enumerate(INDEXES):
        ax = fig.add_subplot(len(INDEXES), 1, i + 1)
        for j, label in enumerate(labels):
            rows = {r.name: r for r in summaries[label].subgraphs}
            vals = [getattr(rows[n], key) if n in rows else 0.0 for n in names]
            x = [k + (j - (len(labels) - 1) / 2) * width for k in range(len(names))]
            ax.bar(x, vals, width=width, color=colors[j % len(colors)], label=label)
        ax.set_ylabel(title, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
        if i == len(INDEXES) - 1:
            _layer_ticks(ax, names)
        else:
            ax.set_xticks([])
    return _png(fig)


def _float(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 100 else f"{v:,.1f}"


def _table(headers: list[str], rows: list[list[Any]]) -> Table:
    return plain_table(headers, rows, floats=_float)


def dpu_section(
    summaries: Mapping[str, DpuProfile],
    *,
    fps_of: Mapping[str, DpuProfile] | None = None,
    figures: bool = True,
) -> Section:
    """A report section: fps per model (of `fps_of`, default `summaries`) and thread count,
    per-subgraph tables of `summaries` (first against last), the five-index plot."""
    first = next(iter(summaries.values()))
    cal = first.calibration
    intro = (
        f"Modelled on {first.board} ({first.cores} x {first.arch} at "
        f"{first.clock_mhz:g} MHz; prunewise's DPU model, docs/dpu.md), INT8, batch 1. "
        f"Constants: efficiency {cal['efficiency']:.3f}, overhead {cal['overhead_us']:.2f} us "
        f"per op, host {cal['host_ms']:.3f} ms per 224x224x3 frame, DDR efficiency "
        f"{cal['bandwidth_efficiency']:.3f} ({cal['source']}). A subgraph is a conv or fc layer "
        "with BN folded, its activation fused and the pooling or addition that follows it."
    )
    blocks: list[Any] = [intro, _table(FPS_HEADERS, dpu_fps_rows(fps_of or summaries))]
    labels = list(summaries)
    if len(labels) >= 2:
        a, b = summaries[labels[0]], summaries[labels[-1]]
        blocks.append(f"Per subgraph, {labels[0]} -> {labels[-1]} (paper A's table 13):")
        blocks.append(_table(COMPARE_HEADERS, dpu_compare_rows(a, b)))
    for label, s in summaries.items():
        blocks.append(f"{label}, per subgraph (paper A's table 12):")
        blocks.append(_table(SUBGRAPH_HEADERS, dpu_subgraph_rows(s)))
        if s.cpu_fallback:
            blocks.append(f"Runs on the host CPU (not on the DPU): {', '.join(s.cpu_fallback)}.")
    if figures:
        blocks.append(
            Figure(
                "Five indexes per subgraph",
                "Workload, run time, performance, memory and memory speed of each subgraph "
                "(paper A's figs. 25-26).",
                dpu_plot(summaries),
            )
        )
    return Section("dpu", "DPU model: per-subgraph workload, time and fps", tuple(blocks))


def dpu_text(summaries: Mapping[str, DpuProfile], board: str) -> str:
    """The DPU profiles as text: each model's subgraphs (and what runs on the host), with two
    models the per-subgraph comparison (paper A table 13), then the fps of each."""
    from prunewise.report.tables import format_table

    parts = []
    for name, s in summaries.items():
        parts.append(
            format_table(SUBGRAPH_HEADERS, dpu_subgraph_rows(s), title=f"{name} on {board}")
        )
        if s.cpu_fallback:
            parts[-1] += f"\nruns on the host CPU, not the DPU: {', '.join(s.cpu_fallback)}"
    if len(summaries) == 2:
        a, b = summaries.values()
        parts.append(format_table(COMPARE_HEADERS, dpu_compare_rows(a, b), title="per subgraph"))
        if unmatched := compare_dpu(a, b).unmatched:
            parts[-1] += f"\nin one model only (not compared): {', '.join(unmatched)}"
    parts.append(format_table(FPS_HEADERS, dpu_fps_rows(summaries), title=f"fps on {board}"))
    return "\n\n".join(parts)


def fit_text(fit: FitReport) -> str:
    """`prunewise dpu-fit`'s output: every held-out prediction, the median and worst |error|
    per group of rows, board and thread mode, and the constants fitted on all rows."""
    from prunewise.report.tables import format_table

    heads = ["model", "held out as", "board", "threads", "published fps", "modelled fps", "error %"]
    rows = [
        [s.model, s.held, s.board, s.mode, s.measured, s.predicted, 100 * s.error]
        for s in fit.scored
    ]
    summary = ["rows", "board", "threads", "median |error| %", "worst |error| %"]
    return "\n\n".join(
        [
            format_table(heads, rows, title="held-out predictions"),
            format_table(summary, [list(r) for r in fit.summary]),
            "constants fitted on all rows:\n" + fit.calibration_toml(),
        ]
    )
