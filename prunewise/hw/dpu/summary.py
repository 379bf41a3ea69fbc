"""A model on a DPU board as plain data: per-subgraph rows, totals, fps; two models compared."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from math import prod
from typing import Any

from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.hw.dpu.config import Board
from prunewise.hw.dpu.model import OpTime, fps, merge_times, profile
from prunewise.hw.dpu.ops import DPUOp, dpu_ops

__all__ = ["INDEXES", "compare_dpu", "dpu_summary"]

# paper A's five indexes per subgraph (tables 12-13, figs. 25-26)
INDEXES: tuple[tuple[str, str], ...] = (
    ("gop", "workload (GOP)"),
    ("ms", "run time (ms)"),
    ("gops", "performance (GOP/s)"),
    ("mb", "memory (MB)"),
    ("gbps", "memory speed (GB/s)"),
)


def _threads(threads: Sequence[int]) -> tuple[int, ...]:
    out = tuple(threads)
    if not out or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in out):
        raise PrunewiseError(f"threads must be integers >= 1, got {list(out)}")
    return out


def _subgraphs(ops: list[DPUOp], times: Sequence[OpTime]) -> list[dict[str, Any]]:
    """Ops grouped as the DPU compiles them: a conv/fc with the pooling and additions after it."""
    groups: list[tuple[DPUOp, list[OpTime]]] = []
    for op, t in zip(ops, times, strict=True):
        if op.kind in ("pool", "eltwise") and groups and groups[-1][0].kind != "cpu":
            groups[-1][1].append(t)
        else:
            groups.append((op, [t]))
    rows = []
    for head, parts in groups:
        g = merge_times(head.name, head.kind, parts)
        rows.append(
            {"name": g.name, "kind": g.kind, "ops": [t.name for t in parts],
             "channels": [head.cin, head.cout], "gop": g.gop, "ms": g.ms, "mb": g.mb,
             "compute_ms": g.compute_ms, "memory_ms": g.memory_ms, "gops": g.gops,
             "gbps": g.gbps, "bound": g.bound}
        )  # fmt: skip
    return rows


def dpu_summary(
    model: nn.Module, input_shape: tuple[int, ...], board: Board, threads: Sequence[int] = (1, 2)
) -> dict[str, Any]:
    """Per-subgraph GOP, ms, GOP/s, MB, GB/s (one core busy), totals and fps per thread count.

    A subgraph is a conv or fc layer (BN folded, activation fused) with the pooling and
    additions that follow it, as the compiler groups them; `ops` rows keep each op apart.
    """
    threads = _threads(threads)
    ops = dpu_ops(model, input_shape)
    elements = prod(int(d) for d in input_shape)
    p = profile(ops, board, elements)
    op_rows = [
        {"name": t.name, "kind": t.kind, "fused": list(op.fused), "gop": t.gop, "ms": t.ms,
         "mb": t.mb, "bound": t.bound}
        for t, op in zip(p.ops, ops, strict=True)
    ]  # fmt: skip
    return {
        "board": board.name,
        "arch": board.arch.name,
        "cores": board.cores,
        "clock_mhz": board.clock_mhz,
        "calibration": asdict(board.calibration),
        "input_shape": list(input_shape),
        "subgraphs": _subgraphs(ops, p.ops),
        "ops": op_rows,
        "total": {
            "gop": p.gop,
            "dpu_ms": p.dpu_ms,
            "host_ms": p.host_ms,
            "mb": p.mb,
            "gops": p.gop / (p.dpu_ms / 1e3) if p.dpu_ms else 0.0,
        },
        "cpu_fallback": list(p.cpu_ops),
        "fps": {str(n): fps(ops, board, elements, n) for n in threads},
    }


def compare_dpu(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-subgraph ratios after / before (matched by name) and the fps and GOP ratios."""
    old = {r["name"]: r for r in before["subgraphs"]}
    rows = []
    for r in after["subgraphs"]:
        o = old.get(r["name"])
        if o is None:
            continue
        rows.append(
            {
                "name": r["name"],
                "kind": r["kind"],
                "gop_ratio": o["gop"] / r["gop"] if r["gop"] else None,
                "speedup": o["ms"] / r["ms"] if r["ms"] else None,
                "gops_change": r["gops"] / o["gops"] if o["gops"] else None,
                "mb_ratio": o["mb"] / r["mb"] if r["mb"] else None,
            }
        )
    fps_ratio = {n: after["fps"][n] / before["fps"][n] for n in after["fps"] if n in before["fps"]}
    gop_ratio = before["total"]["gop"] / after["total"]["gop"] if after["total"]["gop"] else None
    return {"subgraphs": rows, "fps_speedup": fps_ratio, "gop_ratio": gop_ratio}
