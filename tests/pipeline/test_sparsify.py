"""`prunewise sparsify` end to end on synthetic data: folder, storage file, PE table, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunewise.cli import main
from prunewise.io import load_checkpoint
from prunewise.pipeline import RunFolder
from prunewise.storage import read_compressed
from tests.pipeline.test_run import _wait_for

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
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").is_file()  # was "damaged"
    assert rec["sparsify"]["overall_sparsity"] == pytest.approx(0.75, abs=0.02)
    assert "final model: BatchNorm statistics re-estimated" in (out / "run.log").read_text()
    storage = rec["storage"]
    assert storage["read_back_exact"] and storage["ratio"] > 4
    payload = storage["compressed_bytes"] - storage["other_bytes"]
    assert storage["counts_equal_file"]
    assert storage["file_bytes"] == storage["header_bytes"] + payload
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
    html = (tmp_path / "peak" / "report.html").read_text()
    assert "Sensitivity scans" in html
    assert "48 validation images, BatchNorm statistics re-estimated on 1,024" in html
    mag = _sparsify(baseline, tmp_path / "mag", "--method", "magnitude", "--sparsity", "0.8")
    assert mag["pe_array"]["balanced_over_unstructured"] > 1.0


def test_bad_options_are_clear_errors(baseline: Path, tmp_path: Path, capsys) -> None:
    for extra, fragment in (
        (["--sparsity", "1.2"], "sparsity (--sparsity) must be a number in [0, 1), got 1.2"),
        (["--method", "nm", "--nm", "5:4"], "5:4"),
        (["--bn-images", "-1"], "bn_images (--bn-images) must be an integer in [0,"),
        (["--scan-images", "0"], "scan_images (--scan-images) must be an integer in [1,"),
        (["--method", "magnitude", "--nm", "2:4"], "n:m (--nm) = 2:4 has no effect"),
        (["--group", "16"], "group (--group) = 16 has no effect with method 'magnitude'"),
        (["--codebook-bits", "4"], "codebook_bits (--codebook-bits) = 4 has no effect with values"),
        (["--codebook-bits", "5"], "codebook_bits (--codebook-bits) = 5 has no effect with values"),
    ):
        argv = ["sparsify", "--checkpoint", str(baseline), *SYNTHETIC, *extra]
        code = main([*argv, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err, err


def test_kill_9_mid_job_then_resume_matches_uninterrupted(
    baseline: Path, tmp_path: Path, capsys
) -> None:
    method = ["--method", "reversed", "--sparsity", "0.6", "--finetune-epochs", "2"]
    straight = _sparsify(baseline, tmp_path / "straight", *method)
    argv = ["sparsify", "--checkpoint", str(baseline), *SYNTHETIC, "--scan-images", "48",
            "--no-progress", *method, "--out", str(tmp_path / "cut")]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunewise", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )  # the thread count of this process (one under pytest-xdist), so the float sums agree
    state = tmp_path / "cut" / "state.pt"
    _wait_for(state, proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "sparsify.json").exists(), "killed too late: job finished"
    step = int(torch.load(state, weights_only=True)["step"])
    assert main([*argv, "--seed", "0"]) == 2  # the folder holds a job: --resume is asked for
    assert "add --resume" in capsys.readouterr().err
    changed = [*argv[:-2], "--lr", "0.02", "--out", str(tmp_path / "cut"), "--resume"]
    assert main(changed) == 2
    assert "started with settings lr=0.01" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    resumed = {n: json.loads((tmp_path / "cut" / f"{n}.json").read_text()) for n in ("sparsify",)}
    assert f"resumed after step {step}" in (tmp_path / "cut" / "run.log").read_text()
    assert resumed["sparsify"]["stages"] == straight["sparsify"]["stages"]
    assert not state.exists()  # the finished job drops its state
    a = load_checkpoint(tmp_path / "straight" / "model.pt").model.state_dict()
    b = load_checkpoint(tmp_path / "cut" / "model.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "model.pws").read_bytes() == (
        tmp_path / "cut" / "model.pws"
    ).read_bytes()
    assert main([*argv, "--resume"]) == 0  # a finished job is read back, not redone
    assert main(["sparsify", "--checkpoint", str(baseline), *SYNTHETIC, "--resume",
                 "--out", str(tmp_path / "none")]) == 2  # fmt: skip
    assert "holds no sparsify job to resume" in capsys.readouterr().err


def test_scans_use_the_whole_validation_split_unless_told() -> None:
    from torch.utils.data import TensorDataset

    from prunewise.data.datasets import DataBundle
    from prunewise.errors import PrunewiseError
    from prunewise.pipeline.sparsify import SparsifySettings, _loaders

    def images(n: int) -> TensorDataset:
        return TensorDataset(torch.zeros(n, 1, 4, 4), torch.zeros(n, dtype=torch.long))

    data = DataBundle(images(30), images(20), images(10), 2, (1, 4, 4), "synthetic", ("a", "b"))
    assert SparsifySettings().scan_images is None
    assert len(_loaders(data, SparsifySettings())["scan"].dataset) == 20
    assert len(_loaders(data, SparsifySettings(scan_images=7))["scan"].dataset) == 7
    assert len(_loaders(data, SparsifySettings(scan_images=99))["scan"].dataset) == 20
    with pytest.raises(PrunewiseError, match="scan_images"):
        SparsifySettings(scan_images=0)


def test_a_held_folder_is_refused_and_a_refused_job_writes_nothing(
    baseline: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "held"
    argv = ["sparsify", "--checkpoint", str(baseline), *SYNTHETIC, "--out", str(out)]
    with RunFolder(out).lock():
        assert main(argv) == 2
    assert "in use by another prunewise process" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    if not torch.cuda.is_available():
        fresh = tmp_path / "fresh"
        assert main([*argv[:-1], str(fresh), "--device", "cuda:3"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not fresh.exists()


def test_the_pe_comparison_records_the_sparsity_each_side_reached() -> None:
    from prunewise.hw import PEArray
    from prunewise.pipeline.sparsify import pe_comparison
    from prunewise.prune.fine import magnitude_mask
    from prunewise.report.sparsify import _at

    g = torch.Generator().manual_seed(0)
    weights = {"dw": torch.randn(32, 1, 3, 3, generator=g), "pw": torch.randn(32, 32, generator=g)}
    masks = {k: magnitude_mask(w, 0.5) for k, w in weights.items()}
    pe = pe_comparison(masks, weights, {"dw": 64, "pw": 64}, PEArray(pes=4, group=8))
    u, b = pe["total"]["unstructured"]["sparsity"], pe["total"]["balanced"]["sparsity"]
    assert u == pytest.approx(0.5, abs=0.01)
    assert b == pytest.approx(0.5 * 1024 / (1024 + 288), abs=0.01)  # a depthwise layer: dense
    assert "balanced at sparsity 0.390, the job's masks at 0.500" in _at(pe["total"])
    assert _at({"unstructured": {}, "balanced": {}}) == "at the same sparsity"  # older records


def test_storage_offers_the_layout_the_masks_were_made_for() -> None:
    from prunewise.pipeline.sparsify import SparsifySettings, storage_candidates
    from prunewise.prune.fine import SparsifyConfig

    settings = SparsifySettings()
    nm = storage_candidates(SparsifyConfig(method="nm", n=1, m=4), settings)
    assert [(s.group, s.axis) for s in nm if s.format == "balanced"] == [(16, "in"), (4, "in")]
    grouped = SparsifyConfig(method="balanced", sparsity=0.75, group=8, axis="out")
    own = storage_candidates(grouped, settings)[-1]
    assert (own.format, own.group, own.axis, own.values) == ("balanced", 8, "out", "int8")
    assert len(storage_candidates(SparsifyConfig(method="magnitude"), settings)) == 7


def test_a_balanced_or_nm_job_is_timed_on_an_array_of_its_own_groups() -> None:
    from prunewise.pipeline.sparsify import SparsifySettings, pe_array_for
    from prunewise.prune.fine.config import SparsifyConfig

    settings = SparsifySettings(pes=8, group=16)
    balanced = SparsifyConfig(method="balanced", sparsity=0.6, group=6, axis="out")
    assert (pe_array_for(balanced, settings).group, pe_array_for(balanced, settings).axis) == (
        6, "out")  # fmt: skip
    nm = SparsifyConfig(method="nm", n=3, m=8, axis="out")
    assert (pe_array_for(nm, settings).group, pe_array_for(nm, settings).axis) == (8, "out")
    magnitude = pe_array_for(SparsifyConfig(method="magnitude", sparsity=0.5), settings)
    assert (magnitude.pes, magnitude.group, magnitude.axis) == (8, 16, "in")
