"""A model on a DPU board as a typed record (`DpuProfile`): per-subgraph rows, totals, fps;
two profiles compared."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from math import prod

from torch import nn

from prunewise.errors import PrunewiseError, listing
from prunewise.hw.dpu.config import Board, load_devices
from prunewise.hw.dpu.model import OpTime, fps, merge_times, profile
from prunewise.hw.dpu.ops import DPUOp, dpu_ops
from prunewise.records.dpu import DpuProfile, Subgraph

__all__ = [
    "INDEXES",
    "DpuComparison",
    "SubgraphChange",
    "compare_dpu",
    "dpu_summary",
    "training_form_warning",
]

# paper A's five indexes per subgraph (tables 12-13, figs. 25-26)
INDEXES: tuple[tuple[str, str], ...] = (
    ("gop", "workload (GOP)"),
    ("ms", "run time (ms)"),
    ("gops", "performance (GOP/s)"),
    ("mb", "memory (MB)"),
    ("gbps", "memory speed (GB/s)"),
)


_REPARAMETERIZE = ("reparameterize", "switch_to_deploy", "fuse_reparam")


def _training_form(module: nn.Module) -> bool:
    """A block that fuses its branches for deployment and has not yet: it has the method and
    no fused layer (timm's and Apple's `reparam_conv`, RepVGG's `rbr_reparam`)."""
    if not any(callable(getattr(module, a, None)) for a in _REPARAMETERIZE):
        return False
    return not any("reparam" in name for name, _ in module.named_children())


def training_form_warning(model: nn.Module) -> str | None:
    """A warning when `model` holds blocks in their training form, which have a method that
    fuses their branches for deployment (RepVGG's and MobileOne's `reparameterize`): the DPU
    runs them fused, with fewer operations than modelled here. None otherwise."""
    found = [type(m).__name__ for m in model.modules() if _training_form(m)]
    if not found:
        return None
    return (
        f"{len(found)} block(s) are in their training form ({listing(sorted(set(found)), 3)} "
        "have reparameterize(): RepVGG, MobileOne), modelled with every branch; a DPU runs them "
        "fused: reparameterize the model first (timm.utils.reparameterize_model) and save it "
        "(prunewise.io.save_checkpoint) to model what is deployed"
    )


def _threads(threads: Sequence[int]) -> tuple[int, ...]:
    out = tuple(threads)
    if not out or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in out):
        raise PrunewiseError(f"threads must be integers >= 1, got {list(out)}")
    return out


def _subgraphs(ops: list[DPUOp], times: Sequence[OpTime]) -> tuple[Subgraph, ...]:
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
            Subgraph(g.name, g.kind, g.gop, g.ms, g.gops, g.mb, g.gbps, g.bound,
                     ops=tuple(t.name for t in parts), channels=(head.cin, head.cout),
                     compute_ms=g.compute_ms, memory_ms=g.memory_ms)
        )  # fmt: skip
    return tuple(rows)


def dpu_summary(
    model: nn.Module,
    input_shape: tuple[int, ...],
    board: Board | str,
    threads: Sequence[int] = (1, 2),
) -> DpuProfile:
    """Per-subgraph GOP, ms, GOP/s, MB, GB/s (one core busy), totals and fps per thread count.

    A subgraph is a conv or fc layer (BN folded, activation fused) with the pooling and
    additions that follow it, as the compiler groups them; `ops` rows keep each op apart.
    `board` is a `Board` (`load_devices(path).board(name, arch)`) or a built-in board's name
    ("zcu102"). Raises PrunewiseError for an unknown board name or bad thread counts.
    """
    threads = _threads(threads)
    if isinstance(board, str):
        board = load_devices().board(board)
    if not isinstance(board, Board):
        raise PrunewiseError(
            f'board must be a Board or a board\'s name ("zcu102"), got {type(board).__name__}'
        )
    ops = dpu_ops(model, input_shape)
    elements = prod(int(d) for d in input_shape)
    p = profile(ops, board, elements)
    op_rows = [
        {"name": t.name, "kind": t.kind, "fused": list(op.fused), "gop": t.gop, "ms": t.ms,
         "mb": t.mb, "bound": t.bound}
        for t, op in zip(p.ops, ops, strict=True)
    ]  # fmt: skip
    return DpuProfile(
        board=board.name,
        calibration=asdict(board.calibration),
        subgraphs=_subgraphs(ops, p.ops),
        gop=p.gop,
        dpu_ms=p.dpu_ms,
        fps={n: fps(ops, board, elements, n) for n in threads},
        cpu_fallback=tuple(p.cpu_ops),
        arch=board.arch.name,
        cores=board.cores,
        clock_mhz=board.clock_mhz,
        input_shape=tuple(input_shape),
        host_ms=p.host_ms,
        mb=p.mb,
        gops=p.gop / (p.dpu_ms / 1e3) if p.dpu_ms else 0.0,
        ops=tuple(op_rows),
    )


@dataclass(frozen=True)
class SubgraphChange:
    """One subgraph before -> after (paper A table 13): GOP before / after, the speed-up
    (ms before / after), GOP/s after / before and MB before / after; None where after is 0."""

    name: str
    kind: str
    gop_ratio: float | None
    speedup: float | None
    gops_change: float | None
    mb_ratio: float | None


@dataclass(frozen=True)
class DpuComparison:
    """Two profiles of a model compared: per subgraph (matched by name), the fps speed-up
    per thread count and the GOP ratio before / after."""

    subgraphs: tuple[SubgraphChange, ...]
    fps_speedup: Mapping[int, float]
    gop_ratio: float | None
    unmatched: tuple[str, ...] = ()  # subgraphs of one profile only (a layer pruned away)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def compare_dpu(before: DpuProfile, after: DpuProfile) -> DpuComparison:
    """Per-subgraph ratios after / before (matched by name) and the fps and GOP ratios; the
    subgraphs of one profile only are `unmatched`. Raises PrunewiseError for profiles of other
    input shapes or that share fewer than half their subgraphs: not one model and its pruned
    version."""
    old = {r.name: r for r in before.subgraphs}
    new = {r.name for r in after.subgraphs}
    if before.input_shape and after.input_shape and before.input_shape != after.input_shape:
        raise PrunewiseError(
            f"the two models take inputs {tuple(before.input_shape)} and "
            f"{tuple(after.input_shape)}: compare a model with a pruned version of itself"
        )
    shared = len(new & set(old))
    if 2 * shared < max(len(old), len(new)):
        raise PrunewiseError(
            f"the two models share {shared} of {max(len(old), len(new))} subgraph names: compare "
            "a model with a pruned version of itself"
        )
    rows = [
        SubgraphChange(
            r.name,
            r.kind,
            _ratio(o.gop, r.gop),
            _ratio(o.ms, r.ms),
            _ratio(r.gops, o.gops),
            _ratio(o.mb, r.mb),
        )
        for r in after.subgraphs
        if (o := old.get(r.name)) is not None
    ]
    fps_ratio = {n: v / before.fps[n] for n, v in after.fps.items() if n in before.fps}
    unmatched = tuple(sorted(set(old) ^ new))
    return DpuComparison(tuple(rows), fps_ratio, _ratio(before.gop, after.gop), unmatched)
