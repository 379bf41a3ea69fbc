"""The DPU record (dpu/<stage>.json, docs/dpu.md): a model on a DPU board as the DPU model
sees it, per subgraph and in total, with the fps per thread count, typed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from prunewise.records.schema import DPU, require_shape

__all__ = ["DpuProfile", "Subgraph"]


@dataclass(frozen=True)
class Subgraph:
    """A conv or fc layer with the pooling and additions the compiler fuses after it (paper
    A's five indexes: GOP, ms, GOP/s, MB, GB/s, one core busy), what bounds it ("compute" or
    "memory"), its ops and its (input, output) channels."""

    name: str
    kind: str
    gop: float
    ms: float
    gops: float
    mb: float
    gbps: float
    bound: str
    ops: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()
    compute_ms: float | None = None
    memory_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """One entry of the record's "subgraphs"."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["ops"], out["channels"] = list(self.ops), list(self.channels)
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Subgraph:
        """Read one entry of "subgraphs"."""
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kwargs["ops"] = tuple(kwargs.get("ops", ()))
        kwargs["channels"] = tuple(kwargs.get("channels", ()))
        return cls(**kwargs)


@dataclass(frozen=True)
class DpuProfile:
    """A model on a board: the board (name, DPU size, cores, clock, the model's constants),
    the input shape, the subgraphs, the per-op rows, the totals (GOP; DPU ms with one core;
    host ms; MB; GOP/s), the ops that fall back to the host CPU, and fps by thread count."""

    board: str
    calibration: Mapping[str, Any]
    subgraphs: tuple[Subgraph, ...]
    gop: float
    dpu_ms: float
    fps: Mapping[int, float]
    cpu_fallback: tuple[str, ...] = ()
    arch: str = ""
    cores: int = 1
    clock_mhz: float = 0.0
    input_shape: tuple[int, ...] = ()
    host_ms: float = 0.0
    mb: float = 0.0
    gops: float = 0.0
    ops: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """The dpu/<stage>.json object."""
        return {
            "board": self.board,
            "arch": self.arch,
            "cores": self.cores,
            "clock_mhz": self.clock_mhz,
            "calibration": dict(self.calibration),
            "input_shape": list(self.input_shape),
            "subgraphs": [s.to_dict() for s in self.subgraphs],
            "ops": [dict(o) for o in self.ops],
            "total": {
                "gop": self.gop,
                "dpu_ms": self.dpu_ms,
                "host_ms": self.host_ms,
                "mb": self.mb,
                "gops": self.gops,
            },
            "cpu_fallback": list(self.cpu_fallback),
            "fps": {str(n): v for n, v in self.fps.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DpuProfile:
        """Read a dpu/<stage>.json object; RecordError when it does not have its shape."""
        require_shape(data, DPU, "dpu record")
        total = data["total"]
        return cls(
            board=data["board"],
            calibration=dict(data["calibration"]),
            subgraphs=tuple(Subgraph.from_dict(s) for s in data["subgraphs"]),
            gop=total["gop"],
            dpu_ms=total["dpu_ms"],
            fps={int(n): v for n, v in data["fps"].items()},
            cpu_fallback=tuple(data["cpu_fallback"]),
            arch=data.get("arch", ""),
            cores=data.get("cores", 1),
            clock_mhz=data.get("clock_mhz", 0.0),
            input_shape=tuple(data.get("input_shape", ())),
            host_ms=total.get("host_ms", 0.0),
            mb=total.get("mb", 0.0),
            gops=total.get("gops", 0.0),
            ops=tuple(data.get("ops", ())),
        )
