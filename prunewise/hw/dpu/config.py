"""DPU sizes, boards and the model's fitted constants, read from TOML (built in, or a user's).

`load_devices()` reads the built-in `devices.toml`; `load_devices(path)` lays a user's file over
it, table by table and key by key, so a user adds a board or changes one figure without
repeating the rest. Every value is checked when it is read, naming the file and the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import MISSING, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from prunewise.errors import PrunewiseError
from prunewise.io import overlay
from prunewise.settings import REQUIRED, Settings, setting

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


@dataclass(frozen=True)
class DPUArch(Settings):
    """One DPU core size: parallelism, on-chip RAM and DDR port width."""

    name: str
    pp: int = setting(REQUIRED, "pixel parallelism", kind="int", low=1, high=1024)
    icp: int = setting(REQUIRED, "input-channel parallelism", kind="int", low=1, high=1024)
    ocp: int = setting(REQUIRED, "output-channel parallelism", kind="int", low=1, high=1024)
    bram36k: float = setting(
        REQUIRED,
        "on-chip RAM in 36 Kib blocks",
        kind="float",
        low=0,
        high=100_000,
        low_open=True,
    )
    port_bytes: int = setting(32, "DDR port width in bytes", low=1, high=4096)
    channel_augmentation: bool = setting(
        True, "pack kernel columns of a layer with few input channels into 2 x ICP lanes"
    )
    source: str = ""

    @property
    def ops_per_clock(self) -> int:
        """Peak operations per clock: 2 x PP x ICP x OCP (a MAC is two operations)."""
        return 2 * self.pp * self.icp * self.ocp

    @property
    def channel_parallelism(self) -> int:
        """Channel counts that waste no lane as input or output: lcm(ICP, OCP)."""
        return math.lcm(self.icp, self.ocp)

    @property
    def augmented_channels(self) -> int:
        """Lanes channel augmentation fills (2 x ICP; 0 when off): Vitis AI target_factory,
        DPUCZDX8G_ISA1 targets (channel_num 32 for B4096, 16 for B1024)."""
        return 2 * self.icp if self.channel_augmentation else 0

    @property
    def dw_pp(self) -> int:
        """Pixel parallelism of depthwise convolution and pooling (half of PP, at least 1)."""
        return max(1, self.pp // 2)

    @property
    def buffer_bytes(self) -> int:
        """On-chip bytes for each of weights and feature maps (half the RAM each)."""
        return int(self.bram36k * BYTES_PER_BRAM36K) // 2


@dataclass(frozen=True)
class Calibration(Settings):
    """The model's free constants; fitted values and how they were obtained live in the TOML."""

    efficiency: float = setting(0.8, "share of peak compute reached", low=0, high=1, low_open=True)
    overhead_us: float = setting(20.0, "fixed time per subgraph, microseconds", low=0, high=1e6)
    host_ms: float = setting(0.2, "host time per frame, milliseconds", low=0, high=1e5)
    bandwidth_efficiency: float = setting(
        0.7, "share of DDR bandwidth reached", low=0, high=1, low_open=True
    )
    port_efficiency: float = setting(
        1.0, "share of a core's DDR port bandwidth it reaches alone", low=0, high=1, low_open=True
    )
    cpu_ns_per_element: float = setting(
        5.0, "host CPU time per element of a CPU-only op, nanoseconds", low=0, high=1e6
    )
    source: str = "defaults (not fitted)"


@dataclass(frozen=True)
class Board(Settings):
    """A board: its DPU cores (size, count, clock), DDR bandwidth, host cores, constants."""

    name: str
    arch: DPUArch
    cores: int = setting(REQUIRED, "DPU cores", kind="int", low=1, high=64)
    clock_mhz: float = setting(
        REQUIRED, "DPU clock, MHz", kind="float", low=0, high=10_000, low_open=True
    )
    ddr_gbps: float = setting(
        REQUIRED, "DDR bandwidth, GB/s", kind="float", low=0, high=10_000, low_open=True
    )
    host_cores: int = setting(4, "host CPU cores", low=1, high=1024)
    calibration: Calibration = Calibration()
    source: str = ""

    def check(self) -> None:
        """The DPU size and constants are made and checked objects."""
        if not isinstance(self.arch, DPUArch):
            raise PrunewiseError(f"board {self.name}: arch must be a DPU size, got {self.arch!r}")
        if not isinstance(self.calibration, Calibration):
            raise PrunewiseError(
                f"board {self.name}: calibration must be a table, got {self.calibration!r}"
            )

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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PrunewiseError(f"devices file {path} is not valid TOML ({exc})") from exc


def _table(owner: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PrunewiseError(f"{owner} must be a table, got {value!r}")
    return value


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _build(cls: type, owner: str, table: object, **extra: Any) -> Any:
    """Make `cls` from a TOML table, refusing unknown keys (a typo) with the known ones."""
    table = _table(owner, table)
    known = {f.name for f in fields(cls)} - set(extra)
    unknown = sorted(set(table) - known)
    if unknown:
        raise PrunewiseError(f"{owner}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    required = [f.name for f in fields(cls) if f.name in known and _required(f)]
    missing = [k for k in required if k not in table]
    if missing:
        raise PrunewiseError(f"{owner}: missing key(s) {missing}; give {', '.join(required)}")
    try:
        return cls(**table, **extra)
    except TypeError as exc:  # missing keys are named above; any other argument problem too
        raise PrunewiseError(f"{owner}: {exc}") from exc
    except PrunewiseError as exc:
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
        str(name).upper(): _build(DPUArch, f"{where}: arch.{name}", t, name=str(name).upper())
        for name, t in _table(f"{where}: arch", data.get("arch", {})).items()
    }
    calibration = _build(Calibration, f"{where}: calibration", data.get("calibration", {}))
    devices = Devices(archs, {})
    for name, table in _table(f"{where}: board", data.get("board", {})).items():
        owner = f"{where}: board.{name}"
        table = dict(_table(owner, table))
        if not isinstance(table.get("arch"), str):
            raise PrunewiseError(f"{owner} needs arch = one of {list(archs)}")
        try:
            arch = devices.arch(table.pop("arch"))
        except PrunewiseError as exc:
            raise PrunewiseError(f"{owner}.arch: {exc}") from exc
        cal = table.pop("calibration", None)
        own = calibration if cal is None else _build(Calibration, f"{owner}.calibration", cal)
        devices.boards[str(name).lower()] = _build(
            Board, owner, table, name=str(name).lower(), arch=arch, calibration=own
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
class DPUConfig(Settings):
    """The DPU section of `prunewise run`: which board the report models, with which threads.

    Whether the board and size exist (in the devices file, if any) is checked by `resolve`,
    which a run calls before it starts; the config itself reads no file.
    """

    section: ClassVar[str] = "dpu"

    enabled: bool = setting(True, "leave the DPU model out of the run", flag="--no-dpu")
    board: str = setting("zcu102", "board the DPU model runs on", flag="--board")
    arch: str | None = setting(
        None, "another DPU size on the board (B512 ... B4096)", kind="str", flag="--arch"
    )
    threads: tuple[int, ...] = setting(
        (1, 2), "thread counts of the DPU fps", kind="ints", low=1, high=64, flag="--dpu-threads"
    )
    devices: str | None = setting(
        None,
        "a devices file laid over the built-in one",
        kind="str",
        flag="--devices",
        metavar="TOML",
    )

    def resolve(self) -> Board:
        """The board to model (its DPU size replaced when `arch` is set)."""
        return load_devices(self.devices).board(self.board, arch=self.arch)
