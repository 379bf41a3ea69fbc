"""DPU model: per-subgraph workload, time, traffic and fps of a model on a DPU board."""

from prunewise.hw.dpu.config import Board, Calibration, Devices, DPUArch, load_devices
from prunewise.hw.dpu.fit import REFERENCE_CSV
from prunewise.hw.dpu.model import OpTime, Profile, compute_cycles, fps, memory_bytes, op_time
from prunewise.hw.dpu.ops import DPUOp, dpu_ops
from prunewise.hw.dpu.summary import compare_dpu, dpu_summary

__all__ = [
    "REFERENCE_CSV",
    "Board",
    "Calibration",
    "DPUArch",
    "DPUOp",
    "Devices",
    "OpTime",
    "Profile",
    "compare_dpu",
    "compute_cycles",
    "dpu_ops",
    "dpu_summary",
    "fps",
    "load_devices",
    "memory_bytes",
    "op_time",
]
