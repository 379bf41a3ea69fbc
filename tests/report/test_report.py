"""The report of a run folder: tables with the right numbers, embedded PNGs, partial runs."""

from __future__ import annotations

import ast
import base64
import dataclasses
import json
import random
import re
import shutil
import struct
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.records import Summary
from prunewise.report import build_report
from prunewise.report.document import build_document
from prunewise.report.markdown import render_markdown
from prunewise.report.run import load_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m, validate=True) for m in IMAGE.findall(html)]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _rows(html: str) -> dict[str, tuple[str, list[str]]]:
    """First cell -> (row class, cells) for every table row (the first occurrence wins)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for attrs, body in re.findall(r"<tr([^>]*)>(.*?)</tr>", html, flags=re.S):
        cells = [unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", body, flags=re.S)]
        cls = re.search(r'class="([^"]*)"', attrs)
        if cells and cells[0] not in out:
            out[cells[0]] = (cls.group(1) if cls else "", cells)
    return out


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _expected_row(root: Path, k: int) -> list[str]:
    base = _read(root / "baseline" / "metrics.json")
    m = _read(root / f"iter_{k:02d}" / "metrics.json")
    return [
        f"iter {k}",
        f"{m['params']:,}",
        f"{100 * (1 - m['params'] / base['params']):.2f} %",
        f"{m['flops'] / 1e6:.3f} M",
        f"{100 * (1 - m['flops'] / base['flops']):.2f} %",
        f"{m['val_acc_pruned']:.2f}",
        f"{m['val_acc']:.2f}",
        f"{m['val_acc'] - base['val_acc']:+.2f}",
        f"{m['test_acc']:.2f}",
        f"{m['test_acc'] - base['test_acc']:+.2f}",
        "yes" if m["within_tolerance"] else "no",
    ]


def _self_contained(html: str) -> None:
    assert "<script" not in html and "<link" not in html and "url(" not in html
    assert "http://" not in html and "https://" not in html
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/png;base64,")
    for href in re.findall(r'href="([^"]*)"', html):
        assert href.startswith("#")


def test_finished_run(tmp_path: Path, fake_run: Callable[..., Path]) -> None:
    root = fake_run(tmp_path / "run")
    path = build_report(root)
    assert path == root / "report.html"
    html = path.read_text(encoding="utf-8")
    _self_contained(html)

    pngs = _pngs(html)
    assert len(pngs) == 6
    for png in pngs:
        width, height = _png_size(png)
        assert 500 <= width <= 2500 and 250 <= height <= 2000
        assert png.endswith(b"IEND\xaeB`\x82")

    rows = _rows(html)
    assert rows["baseline"][1][:4] == ["baseline", "623,706", "–", "14.463 M"]
    for k in (1, 2, 3):
        assert rows[f"iter {k}"][1][:11] == _expected_row(root, k)
    assert rows["iter 2"][0] == "kept" and rows["iter 2"][1][-1] == "kept"
    assert rows["iter 3"][0] == "bad" and rows["iter 3"][1][-1] == "below tolerance"
    assert rows["features.0"][1] == ["features.0", "16", "12", "9", "7", "56 %"]
    assert "stopped because validation accuracy fell more than the tolerance" in html
    assert "Not available yet" not in html
    assert rows["baseline (unpruned)"][1][1:3] == ["2,500,000", "700,000"]
    assert rows["iter 2 (kept)"][1][-3::2] == ["0.200", "passed"]  # INT8 points lost, checks
    assert "Deployment: INT8 and ONNX Runtime" in html
    speedups = re.findall(r"<td[^>]*>iter 2 \(kept\)</td>(.*?)</tr>", html, flags=re.S)
    assert any("int8" in s and "4.000" in s for s in speedups)  # 0.8 ms float / 0.2 ms int8
    assert "cross-entropy only" in html and "alpha 0.5, beta 0.5 (scheme 1)" in html

    md = (root / "report.md").read_text(encoding="utf-8")
    assert "| **iter 2** | **195,594** |" in md
    assert "data:" not in md and "](" not in md
    leftovers = {p.name for p in root.iterdir() if p.name.startswith(".")}
    assert not leftovers


def test_partial_run_shows_what_is_there(tmp_path: Path, fake_run: Callable[..., Path]) -> None:
    root = fake_run(
        tmp_path / "run", iterations=2, gap=2, pending=3, finished=False, group_experiment=False
    )
    html = build_report(root).read_text(encoding="utf-8")
    _self_contained(html)
    pngs = _pngs(html)
    assert len(pngs) == 5  # no group experiment yet
    assert all(_png_size(p)[0] > 0 for p in pngs)

    rows = _rows(html)
    assert rows["iter 1"][1][:11] == _expected_row(root, 1)
    assert rows["iter 1"][0] == "kept" and rows["iter 1"][1][-1] == "kept so far"
    assert rows["iter 2"][1][-1] == "folder missing"
    assert rows["iter 3"][0] == "pending"
    assert rows["iter 3"][1][5] == "60.50" and rows["iter 3"][1][6] == "–"
    assert rows["iter 3"][1][-1] == "fine-tuning (unfinished: running or stopped)"
    assert "Run in progress" in html
    assert rows["group_experiment.json"][1][1].startswith("the group experiment")
    assert rows["summary.json"][1][1].startswith("the run is not finished")
    assert "iter_02/" in rows and "iter_03/" in rows
    assert rows["features.0"][1] == ["features.0", "16", "12", "75 %"]


def test_config_only(tmp_path: Path, fake_run: Callable[..., Path]) -> None:
    root = fake_run(tmp_path / "run", iterations=0, finished=False, group_experiment=False)
    for p in (root / "baseline").iterdir():
        p.unlink()
    (root / "baseline").rmdir()
    html = build_report(root).read_text(encoding="utf-8")
    assert _pngs(html) == []
    assert "baseline/" in _rows(html)
    assert "vgg13_bn_small (width 0.25)" in html


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(
        PrunewiseError, match=r"not a prunewise run folder .*config\.json is missing"
    ):
        build_report(tmp_path)
    with pytest.raises(PrunewiseError, match="no such directory"):
        build_report(tmp_path / "nowhere")


def test_stopped_with_nothing_to_prune(tmp_path: Path, fake_run: Callable[..., Path]) -> None:
    root = fake_run(tmp_path / "run", iterations=2)
    (root / "iter_03").mkdir()
    (root / "iter_03" / "plan.json").write_text('{"format": "prunewise-plan/1", "groups": []}')
    summary = _read(root / "summary.json")
    summary["stopped"] = "nothing_to_prune"
    (root / "summary.json").write_text(json.dumps(summary))
    md = render_markdown(build_document(load_run(root), figures=False))
    assert "stopped because the policy removed no channel. Kept: iter 2." in md
    assert "| iter 3 |" in md and "the policy removed no channel: stopped |" in md
    assert "Not available yet" not in md


def test_distillation_and_unreadable_file(tmp_path: Path, fake_run: Callable[..., Path]) -> None:
    root = fake_run(tmp_path / "run", teacher="baseline")
    (root / "group_experiment.json").write_text("{ half written")
    md = render_markdown(build_document(load_run(root), figures=False))
    assert "knowledge distillation from the baseline model (temperature 4, weight 0.9)" in md
    assert "run/group_experiment.json | unreadable" in md


def test_plots_are_pngs_and_reject_empty_records(
    tmp_path: Path, fake_run: Callable[..., Path]
) -> None:
    from prunewise.report import plots

    root = fake_run(tmp_path / "run")
    analysis = _read(root / "baseline" / "analysis.json")
    analysis["layers"] = analysis["layers"][:3]
    analysis["groups"] = analysis["groups"][:3]
    summary = _read(root / "summary.json")
    summary["channels"] = dict(list(summary["channels"].items())[:3])
    for draw, record in (
        (plots.sparsity_plot, analysis),
        (plots.gamma_density_plot, analysis),
        (plots.group_experiment_plot, _read(root / "group_experiment.json")),
    ):
        assert draw(record)[:8] == PNG_SIGNATURE
        with pytest.raises(PrunewiseError):
            draw({})
    typed = Summary.from_dict(summary)  # the summary plots draw the typed record
    for draw in (plots.accuracy_flops_plot, plots.size_plot, plots.channels_plot):
        assert draw(typed)[:8] == PNG_SIGNATURE
    with pytest.raises(PrunewiseError, match="baseline: missing"):
        Summary.from_dict({})
    with pytest.raises(PrunewiseError, match="no per-layer channel counts"):
        plots.channels_plot(dataclasses.replace(typed, channels={}))


def test_matplotlib_is_imported_only_inside_functions() -> None:
    import prunewise.report

    package = Path(prunewise.report.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "matplotlib" for n in names), path.name


def test_tables_write_integers_with_separators() -> None:
    from prunewise.report.blocks import integer, plain_table
    from prunewise.report.tables import format_table

    assert [integer(v) for v in (999, 9_580, -2_496_506)] == ["999", "9,580", "-2,496,506"]
    assert format_table(["GOP"], [[0.00031], [0.0], [1.5]]).split()[2:] == [
        "0.00031",
        "0.000",
        "1.500",
    ]
    table = plain_table(["bytes", "ok"], [[2_496_506, True], [None, False]])
    assert table.rows == (("2,496,506", "True"), ("–", "False"))
    assert table.numeric == (True, False)
    assert "2,496,506" in format_table(["bytes"], [[2_496_506]])


_WRONG = (None, "x", [], {}, -1, 1e308, True, 99, [1], {"a": 1})


def _damage(data: object, rng: random.Random) -> tuple[object, str]:
    """`data` with one value (at a random depth) deleted or replaced by one of another type."""
    path: list[object] = []
    node = data
    while isinstance(node, dict | list) and node and rng.random() < 0.7:
        key = rng.choice(list(node) if isinstance(node, dict) else range(len(node)))
        path.append(key)
        if not isinstance(node[key], dict | list) or not node[key]:
            break
        node = node[key]
    value = rng.choice(("delete", *_WRONG))
    if not path:
        return value if value != "delete" else {}, f"the whole record -> {value!r}"
    parent = data
    for key in path[:-1]:
        parent = parent[key]  # type: ignore[index]
    if value == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif value != "delete":
        parent[path[-1]] = value  # type: ignore[index]
    return data, f"{path} -> {value!r}"


@pytest.mark.parametrize("seed", range(2))
def test_damaged_records_never_crash_the_report(
    seed: int, tmp_path: Path, fake_run: Callable[..., Path]
) -> None:
    """Each record of a finished run damaged in turn (seeded): the report is built and names
    what it left out, or refuses in one line; never another exception."""
    original = fake_run(tmp_path / "run", iterations=3)
    files = sorted(original.rglob("*.json"))
    rng = random.Random(seed)
    for i in range(10):
        root = tmp_path / f"damaged_{i}"
        shutil.copytree(original, root)
        target = root / rng.choice(files).relative_to(original)
        damaged, what = _damage(json.loads(target.read_text()), rng)
        target.write_text(json.dumps(damaged))
        try:
            render_markdown(build_document(load_run(root), figures=True))
        except PrunewiseError:
            continue
        except Exception as exc:  # the failure this test exists to catch
            pytest.fail(f"{target.relative_to(root)} {what}: {type(exc).__name__}: {exc}")


def test_a_failed_attempt_is_shown(tmp_path: Path, fake_run: Callable[..., Path]) -> None:
    root = fake_run(tmp_path / "run", iterations=2, finished=False)
    failure = {"error": "CUDA out of memory", "type": "RuntimeError", "time_utc": "2026-11-30"}
    (root / "failed.json").write_text(json.dumps(failure))
    md = render_markdown(build_document(load_run(root), figures=False))
    assert "the last attempt ended with an error (CUDA out of memory)" in md
    assert "--resume" in md


def test_empty_summary_and_bare_config_are_called_damaged(
    tmp_path: Path, fake_run: Callable[..., Path]
) -> None:
    root = fake_run(tmp_path / "run", iterations=2)
    (root / "summary.json").write_text("{}")
    md = render_markdown(build_document(load_run(root), figures=False))
    assert "summary.json | damaged (baseline: missing); left out" in md
    (root / "config.json").write_text('{"format": "prunewise-run/1"}')
    with pytest.raises(PrunewiseError, match=r"config\.json: damaged \(model: missing\)"):
        build_report(root)


class _LayerNormNet(nn.Module):
    """A channels-first LayerNorm written by hand (a mean over the channels), then a flatten
    into Linear layers without any norm: groups ranked by their weights."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        x = (x - x.mean(1, keepdim=True)).relu()
        x = torch.flatten(self.c2(x).relu(), 1)
        return self.fc2(self.fc1(x).relu())


def test_the_group_table_shows_what_is_pruned_and_what_is_not_exact() -> None:
    from prunewise.analysis import analyze
    from prunewise.prune import uniform_plan
    from prunewise.report import analysis_records, group_rows

    torch.manual_seed(0)
    result = analyze(_LayerNormNet().eval(), torch.rand(4, 1, 4, 4), input_shape=(1, 4, 4))
    plan = uniform_plan(result.graph, 0.5, importance="l2")
    headers, rows = group_rows(analysis_records(result, plan))
    notes = {row[0]: row[headers.index("note")] for row in rows}
    assert set(notes) == {"c1", "c2", "fc1"}  # no |gamma|, shown since pruned
    assert "not exact: mean" in notes["c1"] and "reduces over the channels" in notes["c1"]
    assert "not exact" not in notes["fc1"]


def test_a_run_from_a_baseline_checkpoint_does_not_claim_the_default_model_or_training() -> None:
    from types import SimpleNamespace

    from prunewise.report.run import config_highlights

    config = {
        "model": {"name": "vgg13_bn_small", "width": 0.25, "baseline": "runs/r20.pt"},
        "train": {"epochs": 3, "lr": 0.01, "slimming": 0.01},
        "data": {"name": "fashion-mnist"},
    }
    run = SimpleNamespace(
        config=config, baseline=SimpleNamespace(analysis=None), summary=None, iterations=()
    )
    rows = dict(config_highlights(run))
    assert "vgg13_bn_small" not in rows["model"] and rows["baseline checkpoint"] == "runs/r20.pt"
    assert "baseline epochs" not in rows and "baseline and fine-tuning" not in rows[
        "sparsity training"]  # fmt: skip
