"""Calibration of the DPU model on published fps: leave-one-model-out error, shipped constants."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from prunewise.errors import PrunewiseError
from prunewise.hw.dpu import REFERENCE_CSV
from prunewise.hw.dpu.config import load_devices
from prunewise.hw.dpu.fit import (
    FREE,
    HOST_OPS,
    PRUNED_CSV,
    fit_calibration,
    fit_report,
    leave_one_out,
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


def test_shipped_constants_are_the_fit_on_all_rows(report) -> None:
    fitted = report.calibration
    shipped = load_devices().board("zcu102").calibration
    for name in FREE:
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
def pruned() -> list:
    return [(r, reference_ops(r)) for r in read_reference(PRUNED_CSV)]


@pytest.fixture(scope="module")
def report():
    """The default fit: both built-in files, every DPU-only row left out in turn."""
    return fit_report((REFERENCE_CSV, PRUNED_CSV), load_devices().board)


def test_pruned_rows_stand_in_a_uniform_plan_at_the_zoo_gops(pruned) -> None:
    labels = [r.label for r, _ in pruned]
    assert labels == [
        "resnet50 pruned 0.3", "resnet50 pruned 0.5", "resnet50 pruned 0.7", "efficientnet_b0",
    ]  # fmt: skip
    convs = {}
    for ref, ops in pruned:
        gop = sum(o.gop for o in ops if o.kind in ("conv", "dwconv", "fc"))
        if ref.pruned_ratio:  # (the zoo's 0.36 for EfficientNet-B0 is torchvision's MACs)
            assert gop == pytest.approx(ref.gops, rel=0.01)
        convs[ref.label] = [o.cout for o in ops if o.kind == "conv"]
    # the residual stream (every block's last 1x1 conv) keeps its channels, inner ones shrink
    assert convs["resnet50 pruned 0.7"][3] == convs["resnet50 pruned 0.3"][3] == 256
    assert convs["resnet50 pruned 0.7"][1] < convs["resnet50 pruned 0.3"][1] < 64


def test_fit_report_leaves_pruned_rows_out_and_predicts_host_op_rows(report, pruned) -> None:
    groups = {s.group for s in report.scored}
    assert groups == {"unpruned, left out", "pruned, left out", f"unpruned, {HOST_OPS}"}
    left = [s for s in report.scored if s.group == "pruned, left out"]
    assert len(left) == 12
    assert {s.model for s in left} == {f"resnet50 pruned {r}" for r in (0.3, 0.5, 0.7)}
    for board in ("zcu102", "zcu104"):  # issue 18's target for pruned rows: median <= 5 %
        for mode in ("1t", "mt"):
            errs = [abs(s.error) for s in left if s.board == board and s.mode == mode]
            assert statistics.median(errs) <= 0.05 and max(errs) <= 0.10, (board, mode, errs)
    host = [s for s in report.scored if s.held == HOST_OPS]
    assert {s.model for s in host} == {"efficientnet_b0"} and len(host) == 4
    ref, ops = next(c for c in pruned if c[0].label == "efficientnet_b0")
    board = load_devices().board("zcu102").with_calibration(report.calibration)
    s = next(s for s in host if s.board == "zcu102" and s.mode == "1t")
    assert s.predicted == pytest.approx(fps(ops, board, ref.elements, 1), rel=1e-6)
    rows = {(g, b, m) for g, b, m, _, _ in report.summary}
    assert ("pruned, left out", "zcu102", "1t") in rows
    assert "dpu_reference_pruned.csv" in report.reference


def test_validation_files_are_predicted_never_fitted(tmp_path: Path) -> None:
    one = tmp_path / "one.csv"
    lines = PRUNED_CSV.read_text().splitlines()
    one.write_text("\n".join([ln for ln in lines if not ln.startswith("3.0,pt_")]))
    assert "resnet50" not in one.read_text()  # only the header and EfficientNet-B0's row
    alone = fit_report(REFERENCE_CSV, load_devices().board, validation=one)
    assert {s.group for s in alone.scored} == {"unpruned, left out", "unpruned, validation"}
    assert "validation: " + str(one) in alone.reference
