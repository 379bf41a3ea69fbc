"""DPU sizes, boards and the model's fitted constants, read from TOML (built in, or a user's).

`load_devices()` reads the built-in `devices.toml`; `load_devices(path)` lays a user's file over
it, table by table and key by key, so a user adds a board or changes one figure without
repeating the rest. Every value is checked when it is read, naming the file and the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from prunewise.errors import PrunewiseError
from prunewise.io import overlay

__all__ = [
    "BYTES_PER_BRAM36K",
    "Board",
    "Calibration",
    "DPUArch",
    "DPUConfig",
    "Devices",
    "load_devices",
    "resolve_round_to",
]

BYTES_PER_BRAM36K = 4608  # 36 Kib of data (32 Kib + parity bits used as data by the DPU)


def _positive(owner: str, name: str, value: object, integer: bool = False) -> None:
    """Raise unless `value` is a positive finite number (an int when `integer`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer:
        ok = isinstance(value, int)
    if not ok or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type]
        kind = "a positive integer" if integer else "a positive number"
        raise PrunewiseError(f"{owner}: {name} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class DPUArch:
    """One DPU core size: parallelism, on-chip RAM and DDR port width."""

    name: str
    pp: int
    icp: int
    ocp: int
    bram36k: float
    port_bytes: int = 32
    source: str = ""

    def __post_init__(self) -> None:
        """Check every figure is positive."""
        for name in ("pp", "icp", "ocp", "port_bytes"):
            _positive(f"arch {self.name}", name, getattr(self, name), integer=True)
        _positive(f"arch {self.name}", "bram36k", self.bram36k)

    @property
    def ops_per_clock(self) -> int:
        """Peak operations per clock: 2 x PP x ICP x OCP (a MAC is two operations)."""
        return 2 * self.pp * self.icp * self.ocp

    @property
    def channel_parallelism(self) -> int:
        """Channel counts that waste no lane as input or output: lcm(ICP, OCP)."""
        return math.lcm(self.icp, self.ocp)

    @property
    def dw_pp(self) -> int:
        """Pixel parallelism of depthwise convolution and pooling (half of PP, at least 1)."""
        return max(1, self.pp // 2)

    @property
    def buffer_bytes(self) -> int:
        """On-chip bytes for each of weights and feature maps (half the RAM each)."""
        return int(self.bram36k * BYTES_PER_BRAM36K) // 2


@dataclass(frozen=True)
class Calibration:
    """The model's free constants; fitted values and how they were obtained live in the TOML."""

    efficiency: float = 0.8
    overhead_us: float = 20.0
    host_ms: float = 0.2
    bandwidth_efficiency: float = 0.7
    cpu_ns_per_element: float = 5.0
    source: str = "defaults (not fitted)"

    def __post_init__(self) -> None:
        """Efficiencies in (0, 1]; times >= 0."""
        for name in ("efficiency", "bandwidth_efficiency"):
            value = getattr(self, name)
            _positive("calibration", name, value)
            if value > 1:
                raise PrunewiseError(f"calibration: {name} must be in (0, 1], got {value!r}")
        for name in ("overhead_us", "host_ms", "cpu_ns_per_element"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise PrunewiseError(f"calibration: {name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class Board:
    """A board: its DPU cores (size, count, clock), DDR bandwidth, host cores, constants."""

    name: str
    arch: DPUArch
    cores: int
    clock_mhz: float
    ddr_gbps: float
    host_cores: int = 4
    calibration: Calibration = Calibration()
    source: str = ""

    def __post_init__(self) -> None:
        """Check every figure is positive."""
        for name in ("cores", "host_cores"):
            _positive(f"board {self.name}", name, getattr(self, name), integer=True)
        for name in ("clock_mhz", "ddr_gbps"):
            _positive(f"board {self.name}", name, getattr(self, name))

    @property
    def clock_hz(self) -> float:
        """DPU clock in Hz."""
        return self.clock_mhz * 1e6

    @property
    def peak_gops(self) -> float:
        """Peak GOP/s of one core."""
        return self.arch.ops_per_clock * self.clock_hz / 1e9

    def with_calibration(self, calibration: Calibration) -> Board:
        """The same board with other constants."""
        return replace(self, calibration=calibration)


@dataclass(frozen=True)
class Devices:
    """Known DPU sizes and boards, by name (lower-case board names)."""

    archs: dict[str, DPUArch]
    boards: dict[str, Board]

    def board(self, name: str, arch: str | None = None) -> Board:
        """A board by name, optionally with another DPU size; unknown names list the known."""
        board = self.boards.get(name.lower())
        if board is None:
            raise PrunewiseError(
                f"unknown board {name!r}; known boards: {', '.join(sorted(self.boards))} "
                "(add one in a devices file: docs/dpu.md)"
            )
        if arch is None:
            return board
        return replace(board, arch=self.arch(arch))

    def arch(self, name: str) -> DPUArch:
        """A DPU size by name (B512 ... B4096, or one a devices file adds)."""
        found = self.archs.get(name.upper())
        if found is None:
            raise PrunewiseError(
                f"unknown DPU size {name!r}; known sizes: {', '.join(self.archs)} "
                "(add one in a devices file: docs/dpu.md)"
            )
        return found


def _read(path: Path | None) -> dict[str, Any]:
    """A TOML file as a dict (the built-in one when `path` is None)."""
    if path is None:
        text = resources.files("prunewise.hw.dpu").joinpath("devices.toml").read_text()
        return tomllib.loads(text)
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise PrunewiseError(f"devices file {path} does not exist") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PrunewiseError(f"devices file {path} is not valid TOML ({exc})") from exc


def _build(cls: type, owner: str, table: object, **extra: Any) -> Any:
    """Make `cls` from a TOML table, refusing unknown keys (a typo) with the known ones."""
    if not isinstance(table, dict):
        raise PrunewiseError(f"{owner} must be a table, got {table!r}")
    known = {f.name for f in fields(cls)} - set(extra)
    unknown = sorted(set(table) - known)
    if unknown:
        raise PrunewiseError(f"{owner}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    try:
        return cls(**table, **extra)
    except TypeError as exc:
        raise PrunewiseError(f"{owner}: {exc}") from exc


def load_devices(path: str | Path | None = None) -> Devices:
    """The built-in DPU sizes and boards, with a user's devices file (TOML) laid over them."""
    data = _read(None)
    where = "built-in devices.toml"
    if path is not None:
        data = overlay(data, _read(Path(path)))
        where = f"devices file {path}"
    unknown = sorted(set(data) - {"arch", "board", "calibration"})
    if unknown:
        raise PrunewiseError(f"{where}: unknown table(s) {unknown}; use arch, board, calibration")
    archs = {
        name.upper(): _build(DPUArch, f"{where}: arch.{name}", t, name=name.upper())
        for name, t in data.get("arch", {}).items()
    }
    calibration = _build(Calibration, f"{where}: calibration", data.get("calibration", {}))
    devices = Devices(archs, {})
    for name, table in data.get("board", {}).items():
        if not isinstance(table, dict) or "arch" not in table:
            raise PrunewiseError(f"{where}: board.{name} needs arch = one of {list(archs)}")
        table = dict(table)
        arch = devices.arch(str(table.pop("arch")))
        cal = table.pop("calibration", None)
        own = calibration if cal is None else _build(Calibration, f"board.{name}", cal)
        devices.boards[name.lower()] = _build(
            Board, f"{where}: board.{name}", table, name=name.lower(), arch=arch, calibration=own
        )
    return devices


def resolve_round_to(value: int | str, devices: Devices | None = None) -> int:
    """`round_to` from an integer, or from a DPU size or board name (its channel parallelism)."""
    if isinstance(value, bool):
        raise PrunewiseError(f"round_to must be an integer >= 1 or a DPU size/board, got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    devices = devices or load_devices()
    if text.lower() in devices.boards:
        return devices.board(text).arch.channel_parallelism
    if text.upper() in devices.archs:
        return devices.arch(text).channel_parallelism
    raise PrunewiseError(
        f"round_to must be an integer >= 1, a DPU size ({', '.join(devices.archs)}) or a board "
        f"({', '.join(sorted(devices.boards))}), got {value!r}"
    )


@dataclass(frozen=True)
class DPUConfig:
    """The DPU section of `prunewise run`: which board the report models, with which threads."""

    enabled: bool = True
    board: str = "zcu102"
    arch: str | None = None
    threads: tuple[int, ...] = (1, 2)
    devices: str | None = None

    def __post_init__(self) -> None:
        """Check the threads, and that the board and size exist (in the devices file if any)."""
        if not isinstance(self.enabled, bool):
            raise PrunewiseError(f"dpu.enabled must be true or false, got {self.enabled!r}")
        threads = self.threads
        if isinstance(threads, str) or not isinstance(threads, tuple | list) or not threads:
            raise PrunewiseError(f"dpu.threads must be a list of integers >= 1, got {threads!r}")
        for t in threads:
            if isinstance(t, bool) or not isinstance(t, int) or t < 1:
                raise PrunewiseError(f"dpu.threads must hold integers >= 1, got {t!r}")
        object.__setattr__(self, "threads", tuple(threads))
        if self.enabled:
            self.resolve()

    def resolve(self) -> Board:
        """The board to model (its DPU size replaced when `arch` is set)."""
        return load_devices(self.devices).board(self.board, arch=self.arch)
