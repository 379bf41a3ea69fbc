"""`prunewise sparsify` end to end on synthetic data: folder, storage file, PE table, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prunewise.cli import main
from prunewise.io import load_checkpoint
from prunewise.storage import read_compressed

SYNTHETIC = ["--dataset", "synthetic", "--limit", "240", "--seed", "0"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "alex.pt"
    code = main(
        ["train", "--model", "alexnet_small", "--width", "0.125", "--epochs", "1",
         "--no-progress", *SYNTHETIC, "--out", str(path)]
    )  # fmt: skip
    assert code == 0
    return path


def _sparsify(baseline: Path, out: Path, *extra: str) -> dict:
    code = main(
        ["sparsify", "--checkpoint", str(baseline), *SYNTHETIC, "--finetune-epochs", "1",
         "--scan-images", "48", "--no-progress", *extra, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    names = ("sparsify", "storage", "pe_array")
    return {n: json.loads((out / f"{n}.json").read_text()) for n in names}


def test_balanced_sparsify_writes_a_checked_folder(baseline: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bal"
    rec = _sparsify(baseline, out, "--method", "balanced", "--sparsity", "0.75", "--values", "int8")
    assert "report:" in capsys.readouterr().out
    assert rec["sparsify"]["overall_sparsity"] == pytest.approx(0.75, abs=0.02)
    storage = rec["storage"]
    assert storage["read_back_exact"] and storage["ratio"] > 4
    assert storage["file_bytes"] >= storage["compressed_bytes"] - storage["other_bytes"]
    back = read_compressed(out / "model.pws")
    model = load_checkpoint(out / "model.pt").model
    for name, module in model.named_modules():
        if name in back:  # zeros of the stored weights are the model's zeros
            assert np.array_equal(back[name] == 0, module.weight.detach().numpy() == 0)
    pe = rec["pe_array"]
    assert pe["balanced_over_unstructured"] == pytest.approx(1.0)  # the masks are balanced
    assert main(["inspect-sparse", str(out / "model.pws")]) == 0
    assert "all decoded" in capsys.readouterr().out
    damaged = tmp_path / "damaged.pws"
    data = bytearray((out / "model.pws").read_bytes())
    data[-5] ^= 0xFF  # flip bits in the last payload
    damaged.write_bytes(bytes(data))
    assert main(["inspect-sparse", str(damaged)]) == 2
    assert "prunewise: error:" in capsys.readouterr().err
    for name in ("report.html", "report.md", "run.log", "config.json"):
        assert (out / name).is_file()
    assert "Processing-element array model" in (out / "report.html").read_text()


def test_peak_pruning_records_scans_and_magnitude_is_slower_on_pes(
    baseline: Path, tmp_path: Path
) -> None:
    peak = ["--method", "peak", "--delta", "5", "--max-rounds", "1"]
    rec = _sparsify(baseline, tmp_path / "peak", *peak)
    scans = rec["sparsify"]["scans"]
    assert {s["layer"] for s in scans} >= {"classifier.1", "features.0"}
    assert all(s["points"] for s in scans)
    assert "Sensitivity scans" in (tmp_path / "peak" / "report.html").read_text()
    mag = _sparsify(baseline, tmp_path / "mag", "--method", "magnitude", "--sparsity", "0.8")
    assert mag["pe_array"]["balanced_over_unstructured"] > 1.0


def test_bad_options_are_clear_errors(baseline: Path, tmp_path: Path, capsys) -> None:
    for extra, fragment in (
        (["--sparsity", "1.2"], "sparsity must be in [0, 1)"),
        (["--method", "nm", "--nm", "5:4"], "5:4"),
    ):
        argv = ["sparsify", "--checkpoint", str(baseline), *SYNTHETIC, *extra]
        code = main([*argv, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err, err
