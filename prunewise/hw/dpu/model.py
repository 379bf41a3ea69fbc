"""Time, traffic and throughput of each DPU op on a board: pure functions (docs/dpu.md).

Per op, with P = PP, I = ICP, O = OCP of the DPU size and the board's clock:
- compute cycles: conv ceil(Cin/I)·ceil(Cout/O)·ceil(Wout/P)·Hout·Kh·Kw; fc the same with
  Wout = rows (1 for an image); with channel augmentation, a conv with Cin < I and
  Cin·Kw <= 2·I (the first layer) packs its kernel columns into the lanes:
  ceil(Cin·Kw/I)·ceil(Cout/O)·ceil(Wout/P)·Hout·Kh; depthwise conv, pooling and ALU
  activations ceil(C/I)·ceil(Wout/P')·Hout·Kh·Kw with P' = PP/2; element-wise
  ceil(C/I)·ceil(W/P')·H per input;
- DDR bytes: INT8 weights (and bias) + input + output feature maps; when the weights do not
  fit the on-chip weight buffer and the input does not fit the feature-map buffer, the input is
  read once per weight tile;
- time = max(cycles / (clock·efficiency), bytes / bandwidth) + overhead, where the bandwidth of
  a core is min(its port·port_efficiency, DDR·bandwidth_efficiency / active cores);
- a "cpu" op costs elements·cpu_ns_per_element on the host plus the overhead.
Throughput with n threads on c cores: with n <= c, n / (DPU time + host time); with more
threads the host work overlaps the DPU: min(n / (DPU + host), c / DPU time with c cores
sharing DDR, host cores / host time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil

from prunewise.errors import PrunewiseError
from prunewise.hw.dpu.config import Board
from prunewise.hw.dpu.ops import DPUOp

__all__ = [
    "OpTime",
    "Profile",
    "compute_cycles",
    "core_bandwidth",
    "fps",
    "memory_bytes",
    "merge_times",
    "op_time",
    "profile",
]


def compute_cycles(op: DPUOp, board: Board) -> int:
    """Clock cycles of the op's arithmetic with channel and pixel tiling (0 for cpu ops)."""
    a = board.arch
    if op.kind in ("conv", "fc"):
        tiles = ceil(op.cout / a.ocp) * ceil(op.wout / a.pp) * op.hout
        if op.kind == "conv" and op.cin < a.icp and op.cin * op.kw <= a.augmented_channels:
            return tiles * ceil(op.cin * op.kw / a.icp) * op.kh
        return tiles * ceil(op.cin / a.icp) * op.kh * op.kw
    if op.kind in ("dwconv", "pool", "alu"):
        return ceil(op.cout / a.icp) * ceil(op.wout / a.dw_pp) * op.hout * op.kh * op.kw
    if op.kind == "eltwise":
        inputs = max(1, round(op.in_bytes / max(op.out_bytes, 1)))
        return inputs * ceil(op.cout / a.icp) * ceil(op.wout / a.dw_pp) * op.hout
    return 0


def memory_bytes(op: DPUOp, board: Board) -> int:
    """DDR bytes the op moves: weights, input (once per weight tile if it must be) and output."""
    if op.kind == "cpu":
        return op.in_bytes + op.out_bytes  # to the host and back
    buffer = board.arch.buffer_bytes
    passes = 1
    if op.weight_bytes > buffer and op.in_bytes > buffer:
        passes = ceil(op.weight_bytes / buffer)
    return op.weight_bytes + passes * op.in_bytes + op.out_bytes


@dataclass(frozen=True)
class OpTime:
    """One op on one board: paper A's five indexes and what bounds it."""

    name: str
    kind: str
    gop: float
    ms: float
    mb: float
    compute_ms: float
    memory_ms: float

    @property
    def gops(self) -> float:
        """Performance: GOP/s."""
        return self.gop / (self.ms / 1e3) if self.ms else 0.0

    @property
    def gbps(self) -> float:
        """Memory speed: GB/s."""
        return self.mb / 1e3 / (self.ms / 1e3) if self.ms else 0.0

    @property
    def bound(self) -> str:
        """'memory', 'compute' or 'cpu'."""
        if self.kind == "cpu":
            return "cpu"
        return "memory" if self.memory_ms > self.compute_ms else "compute"


def core_bandwidth(board: Board, active: int) -> float:
    """Bytes per second one core gets when `active` cores share the DDR."""
    if active < 1:
        raise PrunewiseError(f"active cores must be >= 1, got {active}")
    port = board.arch.port_bytes * board.clock_hz * board.calibration.port_efficiency
    share = board.ddr_gbps * 1e9 * board.calibration.bandwidth_efficiency / active
    return min(port, share)


def op_time(op: DPUOp, board: Board, active: int = 1) -> OpTime:
    """Time of one op on one core while `active` cores share the DDR."""
    cal = board.calibration
    nbytes = memory_bytes(op, board)
    memory = nbytes / core_bandwidth(board, active) * 1e3
    if op.kind == "cpu":  # host arithmetic, then the transfers: nothing overlaps
        compute = op.macs * cal.cpu_ns_per_element * 1e-6
        ms = compute + memory
    else:
        compute = compute_cycles(op, board) / (board.clock_hz * cal.efficiency) * 1e3
        ms = max(compute, memory)
    return OpTime(
        op.name, op.kind, op.gop, ms + cal.overhead_us / 1e3, nbytes / 1e6, compute, memory
    )


def merge_times(name: str, kind: str, times: Sequence[OpTime]) -> OpTime:
    """Several ops run one after another, as one (a subgraph): workload, time and traffic add."""
    return OpTime(
        name,
        kind,
        sum(t.gop for t in times),
        sum(t.ms for t in times),
        sum(t.mb for t in times),
        sum(t.compute_ms for t in times),
        sum(t.memory_ms for t in times),
    )


@dataclass(frozen=True)
class Profile:
    """Every op of a model on a board with one core busy, and the frame totals."""

    board: str
    ops: tuple[OpTime, ...]
    dpu_ms: float
    host_ms: float

    @property
    def gop(self) -> float:
        """Workload of the frame (GOP)."""
        return sum(o.gop for o in self.ops)

    @property
    def mb(self) -> float:
        """DDR traffic of the frame (MB)."""
        return sum(o.mb for o in self.ops)

    @property
    def cpu_ops(self) -> tuple[str, ...]:
        """Names of the ops that fall back to the host CPU."""
        return tuple(o.name for o in self.ops if o.kind == "cpu")


def _host_ms(board: Board, input_elements: int) -> float:
    """Host time per frame, scaled from the fitted 224 x 224 x 3 figure by the input size."""
    return board.calibration.host_ms * input_elements / (3 * 224 * 224)


def profile(ops: list[DPUOp], board: Board, input_elements: int, active: int = 1) -> Profile:
    """Per-op times with `active` cores sharing the DDR, and the frame's DPU and host time."""
    if not ops:
        raise PrunewiseError("the model has no operation the DPU model can time")
    times = tuple(op_time(op, board, active) for op in ops)
    return Profile(board.name, times, sum(t.ms for t in times), _host_ms(board, input_elements))


def fps(ops: list[DPUOp], board: Board, input_elements: int, threads: int) -> float:
    """Frames per second with `threads` application threads on the board's cores."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise PrunewiseError(f"threads must be an integer >= 1, got {threads!r}")
    active = min(threads, board.cores)
    p = profile(ops, board, input_elements, active)
    serial = threads / (p.dpu_ms + p.host_ms) * 1e3
    if threads <= board.cores:
        return serial
    dpu_bound = board.cores / p.dpu_ms * 1e3
    host_bound = board.host_cores / p.host_ms * 1e3 if p.host_ms else float("inf")
    return min(serial, dpu_bound, host_bound)
