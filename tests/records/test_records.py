"""Run records: typed, versioned, the only place the folder's JSON keys are spelled, and a
folder written by this version (data/run_v1, from `prunewise run` on Fashion-MNIST) still
loads and gives the same report."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

import prunewise
from prunewise.records import (
    IterationRow,
    RecordError,
    RunFolder,
    Scores,
    StageMetrics,
    Summary,
    kept_iteration,
    summarize_stages,
)
from prunewise.report import build_report
from prunewise.report.run import load_run, stage_rows

RUN_V1 = Path(__file__).with_name("data") / "run_v1"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_folder_written_by_version_1_loads_typed() -> None:
    folder = RunFolder(RUN_V1)
    summary = folder.read_summary()
    assert summary.to_dict() == _json(RUN_V1 / "summary.json")  # nothing lost either way
    assert summary.baseline.params == 623706 and summary.kept == 0
    assert summary.stopped == "tolerance" and summary.metric == "accuracy"
    [row] = summary.iterations
    assert row.within_tolerance is False and row.scores.params == 319116
    base, first = folder.metrics(0), folder.metrics(1)
    assert base is not None and first is not None
    assert RunFolder(str(RUN_V1)).metrics(1) == first  # as docs/run-folder.md writes it
    assert StageMetrics.from_dict(first.to_dict()) == first
    assert first.to_dict() == _json(RUN_V1 / "iter_01" / "metrics.json")
    assert first.removed_channels == 269 and first.val_score_pruned == row.val_score_pruned
    rebuilt = summarize_stages(base, [first], stopped="tolerance", tolerance=1.5)
    assert rebuilt == summary  # the summary follows from the stages' metrics alone


def test_the_report_of_a_version_1_folder_is_unchanged(tmp_path: Path) -> None:
    run = shutil.copytree(RUN_V1, tmp_path / "run")
    (run / "report.md").unlink()
    build_report(run)
    assert (run / "report.md").read_text() == (RUN_V1 / "report.md").read_text()
    rows = stage_rows(load_run(run))
    assert [r.kept for r in rows] == [True, False]
    assert rows[1].val_delta == pytest.approx(9.083333333333334 - 11.166666666666666)


def test_a_summary_without_format_loads_and_another_format_is_refused() -> None:
    data = _json(RUN_V1 / "summary.json")
    del data["format"]  # written before records had versions
    assert Summary.from_dict(data).kept == 0
    with pytest.raises(RecordError, match="prunewise-summary/2"):
        Summary.from_dict({**data, "format": "prunewise-summary/2"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kept": "2"}, "kept: expected an integer"),
        ({"stopped": "bored"}, "stopped must be one of"),
        ({"baseline": {"params": 1}}, "baseline.flops: missing"),
    ],
)
def test_a_damaged_summary_names_the_key(change: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        Summary.from_dict({**_json(RUN_V1 / "summary.json"), **change})


def test_a_finished_stage_needs_its_scores() -> None:
    data = _json(RUN_V1 / "iter_01" / "metrics.json")
    del data["val_acc"]
    with pytest.raises(RecordError, match="val_acc: missing"):
        StageMetrics.from_dict(data)
    unfinished = StageMetrics(iteration=2, stage="iter_02", val_score_pruned=80.0)
    assert StageMetrics.from_dict(unfinished.to_dict()) == unfinished
    with pytest.raises(RecordError, match="not finished"):
        _ = unfinished.scores


def test_unknown_keys_survive_a_round_trip() -> None:
    data = {**_json(RUN_V1 / "baseline" / "metrics.json"), "note": "from a user"}
    assert StageMetrics.from_dict(data).to_dict() == data


def test_kept_iteration_is_the_last_within_tolerance_before_the_first_that_is_not() -> None:
    s = Scores(10, 10, 1.0)
    rows = [IterationRow(k, s, within_tolerance=w) for k, w in ((1, True), (2, True), (3, False))]
    assert kept_iteration(rows) == 2
    assert kept_iteration(rows[2:]) == 0
    assert kept_iteration([*rows[:1], dataclasses.replace(rows[2], iteration=2), rows[1]]) == 1


def test_the_folders_json_keys_are_spelled_only_in_the_records_module() -> None:
    package = Path(prunewise.__file__).parent
    spelled = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if re.search(r"[\"']val_acc[\"']", p.read_text(encoding="utf-8"))
    ]
    assert spelled and all(p.startswith("records/") for p in spelled), spelled


def test_a_baseline_near_chance_is_flagged() -> None:
    from prunewise.records import StageMetrics, chance_warning

    def baseline(val: float, **extra: float) -> StageMetrics:
        return StageMetrics(0, "baseline", True, 10, 10, val, None, extra=extra)

    assert "scores 12.0 % on validation, near the 10.0 % of guessing" in (
        chance_warning(baseline(12.0, chance=10.0)) or ""
    )
    assert "train it longer (--epochs)" in (chance_warning(baseline(12.0, chance=10.0)) or "")
    given = dataclasses.replace(baseline(12.0, chance=10.0), source="b.pt", epochs=())
    assert "train the one given (b.pt) first" in (chance_warning(given) or "")
    assert chance_warning(baseline(15.5, chance=10.0)) is None
    assert chance_warning(baseline(12.0)) is None  # segmentation, a user's metric, older runs
    back = StageMetrics.from_dict(baseline(12.0, chance=10.0).to_dict())
    assert back.extra == {"chance": 10.0}  # metrics.json keeps it


def test_the_console_log_follows_the_level_set_on_the_prunewise_logger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from prunewise.records import RunFolder, close_log, open_log

    library = logging.getLogger("prunewise")
    folder = RunFolder(tmp_path / "run")
    log = open_log(folder, main=True)
    try:
        log.info("shown")
        library.setLevel(logging.WARNING)
        log.info("quiet")
        log.warning("loud")
    finally:
        library.setLevel(logging.NOTSET)
        close_log(log)
    err = capsys.readouterr().err
    assert "shown" in err and "loud" in err and "quiet" not in err
    assert "quiet" in folder.log.read_text()  # run.log keeps every line
    assert log.name not in logging.Logger.manager.loggerDict


def test_damaged_records_are_reported_as_damaged_not_as_unfinished(tmp_path: Path) -> None:
    run = shutil.copytree(RUN_V1, tmp_path / "run")
    (run / "summary.json").write_text("{ not json")
    (run / "iter_01" / "metrics.json").write_text("[]")
    build_report(run)
    text = (run / "report.md").read_text()
    assert "summary.json is damaged, so how the run ended is unknown" in text
    assert "| iter_01/ | metrics.json damaged: its figures are left out |" in text
    assert "Run in progress" not in text and "not yet fine-tuned" not in text


def test_the_markdown_report_shows_html_from_the_folder_as_text(tmp_path: Path) -> None:
    run = shutil.copytree(RUN_V1, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["model"]["name"] = "<img src=x onerror=alert(1)>"
    (run / "config.json").write_text(json.dumps(config))
    build_report(run)
    text = (run / "report.md").read_text()
    assert "<img" not in text and "&lt;img src=x" in text
