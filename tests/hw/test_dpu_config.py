"""DPU device configs: the built-in sizes and boards, user files laid over them, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunewise.errors import PrunewiseError
from prunewise.hw.dpu.config import Board, Calibration, load_devices, resolve_round_to


def test_built_in_boards_have_their_published_figures() -> None:
    dev = load_devices()
    zcu102, zcu104 = dev.board("zcu102"), dev.board("ZCU104")
    assert (zcu102.cores, zcu102.clock_mhz, zcu102.arch.name) == (3, 281.0, "B4096")
    assert (zcu104.cores, zcu104.clock_mhz, zcu104.arch.name) == (2, 300.0, "B4096")
    assert zcu102.peak_gops == pytest.approx(4096 * 0.281)
    assert set(dev.archs) == {f"B{n}" for n in (512, 800, 1024, 1152, 1600, 2304, 3136, 4096)}
    assert all(a.source.startswith("PG338") for a in dev.archs.values())
    assert "least-squares" in zcu102.calibration.source  # the shipped constants are fitted
    assert dev.board("zcu102", arch="b1024").arch.name == "B1024"


def test_a_user_file_adds_a_board_and_overrides_one_figure(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[board.kv260]\narch = "B3136"\ncores = 1\nclock_mhz = 300\nddr_gbps = 19.2\n'
        "[board.zcu104]\nclock_mhz = 325.0\n"
        "[arch.B9000]\npp = 8\nicp = 24\nocp = 24\nbram36k = 400\n"
    )
    dev = load_devices(path)
    assert dev.board("kv260").arch.name == "B3136"
    assert dev.board("zcu104").clock_mhz == 325.0 and dev.board("zcu104").cores == 2
    assert dev.arch("b9000").ops_per_clock == 2 * 8 * 24 * 24
    assert dev.board("kv260").calibration == dev.board("zcu102").calibration


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[board.zcu102]\nclock_mhz = -281\n", "board.zcu102: clock_mhz must be a number in (0,"),
        ("[board.zcu102]\nddr_gbps = 0\n", "ddr_gbps must be a number in (0, 10000], got 0"),
        ("[board.zcu102]\ncores = 1.5\n", "cores must be an integer in [1, 64], got 1.5"),
        ("[arch.B4096]\nicp = 0\n", "arch.B4096: icp must be an integer in [1, 1024], got 0"),
        ("board = [1, 2]\n", "board must be a table, got [1, 2]"),
        ("[board.zcu102]\ncalibration = [1]\n", "board.zcu102.calibration must be a table"),
        ("[calibration]\nhost_ms = inf\n", "host_ms must be a number in [0, 100000], got inf"),
        ("[board.zcu102]\nclock_mhz = true\n", "clock_mhz must be a number in (0, 10000]"),
        ("[board.x]\ncores = 1\n", "board.x needs arch"),
        ('[board.x]\narch = "B77"\n', "board.x.arch: unknown DPU size 'B77'"),
        ("[board.zcu102]\nclok_mhz = 281\n", "unknown key(s) ['clok_mhz']"),
        (
            '[board.mine]\narch = "B4096"\ncores = 2\nclock_mhz = 300\n',
            "board.mine: missing key(s) ['ddr_gbps']; give cores, clock_mhz, ddr_gbps",
        ),
        ("[calibration]\nefficiency = 1.5\n", "efficiency must be a number in (0, 1]"),
        ("[boards.x]\n", "unknown table(s) ['boards']"),
        ("[board.zcu102\n", "is not valid TOML"),
    ],
)
def test_bad_user_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PrunewiseError, match=None) as err:
        load_devices(path)
    assert message in str(err.value)


def test_unknown_names_and_missing_files_list_what_is_known(tmp_path: Path) -> None:
    dev = load_devices()
    with pytest.raises(PrunewiseError, match=r"unknown board 'zcu999'; known boards: zcu102"):
        dev.board("zcu999")
    with pytest.raises(PrunewiseError, match="unknown DPU size 'B5'; known sizes: B512"):
        dev.arch("B5")
    with pytest.raises(PrunewiseError, match="does not exist"):
        load_devices(tmp_path / "none.toml")


def test_dataclasses_check_themselves() -> None:
    arch = load_devices().arch("B512")
    with pytest.raises(PrunewiseError, match=r"clock_mhz must be a number in \(0, 10000\]"):
        Board("b", arch, cores=1, clock_mhz=0.0, ddr_gbps=1.0)
    with pytest.raises(PrunewiseError, match=r"overhead_us must be a number in \[0, 1000000\]"):
        Calibration(overhead_us=-1.0)


def test_round_to_takes_numbers_sizes_and_boards() -> None:
    assert resolve_round_to(8) == 8 and resolve_round_to("12") == 12
    assert resolve_round_to("zcu102") == 16 and resolve_round_to("b1024") == 8
    assert resolve_round_to("B1152") == 12
    with pytest.raises(PrunewiseError, match=r"a DPU size .* or a board"):
        resolve_round_to("kv999")
    with pytest.raises(PrunewiseError, match="round_to must be an integer"):
        resolve_round_to(True)
