"""Calibration of the DPU model on published fps: leave-one-model-out error, shipped constants."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from prunewise.errors import PrunewiseError
from prunewise.hw.dpu import REFERENCE_CSV
from prunewise.hw.dpu.config import load_devices
from prunewise.hw.dpu.fit import (
    VALIDATION_CSV,
    fit_calibration,
    fit_report,
    leave_one_out,
    mt_threads,
    read_reference,
    reference_ops,
)
from prunewise.hw.dpu.model import fps


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


@pytest.fixture(scope="module")
def validation() -> list:
    return [(r, reference_ops(r)) for r in read_reference(VALIDATION_CSV)]


def test_pruned_rows_stand_in_a_uniform_plan_at_the_zoo_gops(validation) -> None:
    labels = [r.label for r, _ in validation]
    assert labels == [
        "resnet50 pruned 0.3", "resnet50 pruned 0.5", "resnet50 pruned 0.7", "efficientnet_b0",
    ]  # fmt: skip
    convs = {}
    for ref, ops in validation:
        gop = sum(o.gop for o in ops if o.kind in ("conv", "dwconv", "fc"))
        if ref.pruned_ratio:  # (the zoo's 0.36 for EfficientNet-B0 is torchvision's MACs)
            assert gop == pytest.approx(ref.gops, rel=0.01)
        convs[ref.label] = [o.cout for o in ops if o.kind == "conv"]
    # the residual stream (every block's last 1x1 conv) keeps its channels, inner ones shrink
    assert convs["resnet50 pruned 0.7"][3] == convs["resnet50 pruned 0.3"][3] == 256
    assert convs["resnet50 pruned 0.7"][1] < convs["resnet50 pruned 0.3"][1] < 64


def test_fit_report_scores_validation_rows_apart_with_the_fit_on_all_rows(
    validation, boards
) -> None:
    report = fit_report(REFERENCE_CSV, load_devices().board)
    groups = {s.group for s in report.scored}
    assert groups == {"unpruned, left out", "pruned, validation", "unpruned, validation"}
    pruned = [s for s in report.scored if s.group == "pruned, validation"]
    assert len(pruned) == 12 and {s.model for s in pruned} == {
        f"resnet50 pruned {r}" for r in (0.3, 0.5, 0.7)
    }
    for s in pruned:  # predicted with the shipped constants (the fit on all reference rows)
        ref, ops = next(c for c in validation if c[0].label == s.model)
        board = boards[s.board]
        threads = 1 if s.mode == "1t" else mt_threads(board)
        assert s.predicted == pytest.approx(fps(ops, board, ref.elements, threads), rel=1e-3)
    rows = {(g, b, m) for g, b, m, _, _ in report.summary}
    assert ("pruned, validation", "zcu102", "1t") in rows
    assert "validation" in report.reference
    alone = fit_report(REFERENCE_CSV, load_devices().board, validation=None)
    assert {s.group for s in alone.scored} == {"unpruned, left out"}
