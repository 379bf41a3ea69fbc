"""End to end on the real Fashion-MNIST: `prunewise train`, `analyze`, `prune --evaluate`.

A tiny VGG-11-BN (width 0.125) trains for one epoch on 2,000 seeded training images
(`--limit 2000`, which also caps validation and test at 2,000 images each); the whole test
takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunewise.analysis import count_flops, count_params
from prunewise.cli import main
from prunewise.data import FASHION_MNIST_DEFAULT_DIR, FASHION_MNIST_FILES
from prunewise.io import load_checkpoint

FMNIST = Path(FASHION_MNIST_DEFAULT_DIR)
LIMIT = 2000
CHANCE = 10.0


def _have_fashion_mnist() -> bool:
    return all(
        (FMNIST / base).is_file() or (FMNIST / f"{base}.gz").is_file()
        for base in FASHION_MNIST_FILES
    )


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _have_fashion_mnist(),
        reason=f"real Fashion-MNIST IDX files not found in {FMNIST} "
        "(apt-get install dataset-fashion-mnist)",
    ),
]

DATA = ["--data-dir", str(FMNIST), "--limit", str(LIMIT), "--seed", "0"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process, assert success with nothing on stderr, return stdout."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    assert "error" not in err
    return out


def _test_accuracy(table: str) -> float:
    """The test row of `prunewise evaluate`'s table."""
    rows = [line.split() for line in table.splitlines()]
    return next(float(row[1]) for row in rows if row and row[0] == "test")


def test_train_analyze_prune_on_real_fashion_mnist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = tmp_path / "baseline.pt"
    out = _run(
        ["train", "--model", "vgg11_bn_small", "--width", "0.125", "--epochs", "1",
         "--batch-size", "32", "--lr", "0.05", "--no-progress", *DATA, "--out", str(baseline)],
        capsys,
    )  # fmt: skip
    assert "epoch 1/1" in out
    assert baseline.is_file()
    base = load_checkpoint(baseline)
    assert base.input_shape == (1, 32, 32)
    assert base.meta["dataset"] == "fashion-mnist"
    assert base.meta["limit"] == LIMIT
    assert base.meta["test_acc"] > 4 * CHANCE
    assert base.meta["val_acc"] > 4 * CHANCE

    analysis = tmp_path / "analysis.json"
    out = _run(
        ["analyze", "--checkpoint", str(baseline), *DATA, "--images", "50", "--out",
         str(analysis)],
        capsys,
    )  # fmt: skip
    assert "Input sparsity per layer" in out
    record = json.loads(analysis.read_text())
    assert record["images"] == 50
    assert record["params"] == count_params(base.model)
    planned = [g for g in record["groups"] if g["kept"] is not None and g["kept"] < g["channels"]]
    assert planned, "scheme 1 should plan to prune some group of a trained VGG"
    assert all(0 <= g["sparsity_mean"] <= 1 for g in planned)

    step = tmp_path / "step"
    out = _run(
        ["prune", "--checkpoint", str(baseline), *DATA, "--alpha", "0.1", "--beta", "0.1",
         "--evaluate", "--out", str(step)],
        capsys,
    )  # fmt: skip
    assert "Pruning step" in out
    for name in ("pruned.pt", "plan.json", "analysis.json", "summary.json"):
        assert (step / name).is_file(), name
    summary = json.loads((step / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    pruned = load_checkpoint(step / "pruned.pt")
    assert pruned.input_shape == (1, 32, 32)
    assert before["params"] == count_params(base.model)
    assert after["params"] == count_params(pruned.model) < before["params"]
    assert after["flops"] == count_flops(pruned.model, (1, 32, 32)) < before["flops"]
    assert before["test_acc"] == pytest.approx(base.meta["test_acc"])
    assert after["test_acc"] > 3 * CHANCE
    assert after["val_acc"] > 3 * CHANCE

    out = _run(["evaluate", "--checkpoint", str(step / "pruned.pt"), *DATA], capsys)
    assert _test_accuracy(out) == pytest.approx(after["test_acc"], abs=1e-3)

    again = tmp_path / "again"
    _run(
        ["prune", "--checkpoint", str(baseline), *DATA, "--plan", str(step / "plan.json"),
         "--out", str(again)],
        capsys,
    )  # fmt: skip
    assert count_params(load_checkpoint(again / "pruned.pt").model) == after["params"]

    deployed = tmp_path / "deploy"
    out = _run(
        ["deploy", "--checkpoint", str(step / "pruned.pt"), *DATA, "--calibration-images",
         "128", "--batch-sizes", "1", "--threads", "1", "--repeats", "3", "--no-progress",
         "--out", str(deployed)],
        capsys,
    )  # fmt: skip
    record = json.loads((deployed / "deploy.json").read_text())
    acc = record["accuracy"]
    assert acc["pytorch_float"] == pytest.approx(after["test_acc"], abs=1e-3)
    assert acc["ort_float"] == pytest.approx(acc["pytorch_float"], abs=0.06)  # <= 1 image
    assert acc["pytorch_float"] - acc["ort_int8"] <= 1.0  # INT8 costs little on real data
    assert record["parity"]["int8_top1_agreement"] >= 0.99
    assert record["bytes"]["int8"] < 0.5 * record["bytes"]["float"]
