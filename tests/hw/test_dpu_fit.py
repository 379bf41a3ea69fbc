"""Calibration of the DPU model on published fps: leave-one-model-out error, shipped constants."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from prunewise.errors import PrunewiseError
from prunewise.hw.dpu import REFERENCE_CSV
from prunewise.hw.dpu.config import load_devices
from prunewise.hw.dpu.fit import fit_calibration, leave_one_out, read_reference, reference_ops


@pytest.fixture(scope="module")
def cases() -> list:
    return [(r, reference_ops(r)) for r in read_reference(REFERENCE_CSV)]


@pytest.fixture(scope="module")
def boards() -> dict:
    dev = load_devices()
    return {"zcu102": dev.board("zcu102"), "zcu104": dev.board("zcu104")}


def test_reference_rows_and_workloads_match_the_zoo(cases) -> None:
    assert [r.torchvision for r, _ in cases] == [
        "resnet50", "resnet18", "resnet101", "vgg16", "googlenet", "squeezenet1_1",
    ]  # fmt: skip
    for ref, ops in cases:
        assert len(ref.fps) == 4
        gop = sum(o.gop for o in ops if o.kind in ("conv", "dwconv", "fc"))
        assert gop == pytest.approx(ref.gops, rel=0.1)  # tf resnet101 counts 8 % less
        assert not [o for o in ops if o.kind == "cpu"]


def test_leave_one_model_out_error_meets_the_targets(cases, boards) -> None:
    scored = leave_one_out(cases, boards)
    assert len(scored) == 24
    for board in boards:
        for mode in ("1t", "mt"):
            errors = [abs(s.error) for s in scored if s.board == board and s.mode == mode]
            assert statistics.median(errors) <= 0.15, (board, mode, errors)
            assert max(errors) <= 0.30, (board, mode, errors)


def test_shipped_constants_are_the_fit_on_all_rows(cases, boards) -> None:
    fitted = fit_calibration(cases, boards)
    shipped = boards["zcu102"].calibration
    for name in ("efficiency", "overhead_us", "host_ms", "bandwidth_efficiency"):
        assert getattr(shipped, name) == pytest.approx(getattr(fitted, name), rel=1e-3, abs=1e-3)


def test_bad_reference_files_and_fits_are_clear_errors(tmp_path: Path, cases, boards) -> None:
    with pytest.raises(PrunewiseError, match="does not exist"):
        read_reference(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("# only a comment\nname,fps\nx,1\n")
    with pytest.raises(PrunewiseError, match="no rows with a torchvision column"):
        read_reference(bad)
    with pytest.raises(PrunewiseError, match="cannot fit"):
        fit_calibration(cases, boards, free=("clock",))
    with pytest.raises(PrunewiseError, match="at least two architectures"):
        leave_one_out(cases[:1], boards)
