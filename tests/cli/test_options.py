"""Options the error contract leans on: --limit, --input-size driving the data, --seed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from prunewise.cli import main
from prunewise.data import DataBundle, DataConfig, TensorImages, limit_data, load_data
from prunewise.errors import PrunewiseError
from prunewise.io import load_checkpoint

SYNTHETIC = ["--dataset", "synthetic"]
SMALL = ["--model", "vgg11_bn_small", "--width", "0.125"]


def _bundle() -> DataBundle:
    return load_data(DataConfig(name="synthetic", synthetic_train=200, synthetic_test=80))


def test_limit_caps_every_split_with_a_seed() -> None:
    data = _bundle()
    small = limit_data(data, 30, seed=1)
    assert (len(small.train), len(small.val), len(small.test)) == (30, 30, 30)
    assert isinstance(small.train, TensorImages)
    assert small.train.view.augment == data.train.view.augment
    assert set(small.test.indices.tolist()) <= set(data.test.indices.tolist())
    again = limit_data(data, 30, seed=1)
    assert torch.equal(again.train.indices, small.train.indices)
    other = limit_data(data, 30, seed=2)
    assert not torch.equal(other.train.indices, small.train.indices)


def test_limit_keeps_smaller_splits_and_wraps_other_datasets() -> None:
    data = _bundle()
    plain = TensorDataset(torch.zeros(50, 3, 32, 32), torch.zeros(50, dtype=torch.int64))
    small = limit_data(replace(data, test=plain), 45, seed=0)
    assert len(small.val) == len(data.val) == 40  # a fifth of 200: under the limit, unchanged
    assert small.val is data.val
    assert isinstance(small.test, Subset)
    assert len(small.test) == 45
    with pytest.raises(PrunewiseError, match="limit"):
        limit_data(data, 0, seed=0)


def test_train_records_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    argv = ["train", *SMALL, *SYNTHETIC, "--epochs", "0", "--limit", "20", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "test acc" in capsys.readouterr().out
    assert load_checkpoint(out).meta["limit"] == 20


def test_input_size_resizes_the_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "a.json"
    argv = ["analyze", *SMALL, *SYNTHETIC, "--input-size", "1,48,48", "--images", "4"]
    assert main([*argv, "--out", str(record)]) == 0
    capsys.readouterr()
    assert json.loads(record.read_text())["input_shape"] == [1, 48, 48]


def test_the_checkpoint_input_shape_is_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = tmp_path / "m.pt"
    argv = ["train", *SMALL, *SYNTHETIC, "--input-size", "1,40,40", "--epochs", "0"]
    assert main([*argv, "--no-progress", "--out", str(ck)]) == 0
    assert load_checkpoint(ck).input_shape == (1, 40, 40)
    record = tmp_path / "a.json"
    assert main(["analyze", "--checkpoint", str(ck), "--images", "4", "--out", str(record)]) == 0
    capsys.readouterr()
    assert json.loads(record.read_text())["input_shape"] == [1, 40, 40]


def test_seed_makes_the_initial_model_reproducible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def initial(seed: int, name: str) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        argv = ["train", *SMALL, *SYNTHETIC, "--epochs", "0", "--seed", str(seed)]
        assert main([*argv, "--no-progress", "--out", str(out)]) == 0
        return load_checkpoint(out).model.state_dict()

    first, second, other = initial(3, "a.pt"), initial(3, "b.pt"), initial(4, "c.pt")
    capsys.readouterr()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_analyze_says_what_can_be_pruned_and_warns_when_little_can(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # alexnet_small's fully connected layers carry no BatchNorm: bn-gamma cannot rank them
    argv = ["analyze", "--model", "alexnet_small", "--width", "0.125", *SYNTHETIC, "--images", "4"]
    record = tmp_path / "a.json"
    assert main([*argv, "--out", str(record)]) == 0
    out, err = capsys.readouterr()
    assert "prunable:" in out and "held whole by no norm scale" in out
    assert "warning: only" in err and "--importance l1" in err
    saved = json.loads(record.read_text())["prunability"]
    assert saved["prunable_channels"] < saved["channels"] / 5 and saved["warning"]
    assert main([*argv, "--importance", "l1"]) == 0
    out, err = capsys.readouterr()
    assert "prunable:" in out and "warning" not in err
