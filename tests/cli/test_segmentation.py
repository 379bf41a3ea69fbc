"""`prunewise run --task segmentation`: a folder of images and masks, scored by mIoU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from prunewise.cli import main
from prunewise.data import DataConfig, load_segmentation
from prunewise.errors import PrunewiseError
from prunewise.export import int8_weight_layers
from prunewise.io import load_checkpoint
from prunewise.train import confusion_matrix

SEGNET = """
from torch import nn


class SegNet(nn.Module):
    def __init__(self, num_classes: int = 21, width: int = 8):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                                 nn.ReLU())

        self.enc = nn.Sequential(block(3, width), nn.MaxPool2d(2), block(width, 2 * width))
        self.dec = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="bilinear"),
                                 block(2 * width, width))
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return {"out": self.head(self.dec(self.enc(x)))}
"""


def _folder(root: Path, n_train: int = 24, n_val: int = 8, size: int = 24) -> Path:
    """Three classes: background and two squares, each coloured; a row of ignored pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for d in ("images", "masks"):
            (root / split / d).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((size, size), np.uint8)
            for c in (1, 2):
                y, x = rng.integers(0, size - 8, 2)
                mask[y : y + 8, x : x + 8] = c
            mask[0] = 255
            img = np.stack([mask == 1, mask == 2, mask == 0], -1).astype(np.float32) * 160
            img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{i}.jpg")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    return root


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "prunewise", "run", "--task", "segmentation", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


COMMON = ("--dataset", "imagefolder", "--data-dir", "data", "--no-progress", "--val-size", "6")


def test_a_segmentation_run_from_a_user_file(tmp_path: Path) -> None:
    _folder(tmp_path / "data", n_train=80)
    (tmp_path / "segnet.py").write_text(SEGNET)
    done = _cli(
        tmp_path, *COMMON, "--model", "segnet.py:SegNet", "--image-size", "24",
        "--epochs", "2", "--max-iterations", "2", "--out", "runs/a", "--no-dpu",
        "--val-size", "16", "--calibration-images", "16", "--no-latency",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "a"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "mIoU" and len(summary["iterations"]) == 2
    assert all(
        0 <= r["val_acc"] <= 100 and r["test_acc"] is not None for r in summary["iterations"]
    )
    assert summary["iterations"][-1]["flops_reduction"] > 0.3
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "segmentation" and config["group_experiment"] == 0
    chance = json.loads((run / "baseline" / "metrics.json").read_text())["chance"]
    assert 0 < chance < 100 / 3  # background everywhere: its IoU (under 1) over 3 classes
    deployed = sorted(run.glob("**/deploy.json"))
    assert len(deployed) == 2  # the baseline and the kept model, in ONNX and INT8
    for path in deployed:
        record = json.loads(path.read_text())
        assert record["metric"] == "mIoU" and record["parity"]["float_ok"]
        assert 0 <= record["accuracy"]["ort_int8"] <= 100
        assert int8_weight_layers(onnx.load(path.parent / "model.int8.onnx")) == 4  # all convs
    report = (run / "report.md").read_text()
    assert "ORT mIoU %" in report or "ORT float %" in report
    assert "val mIoU" in report and "val mIoU %" in done.stdout
    assert "segmentation, scored by mIoU" in report and "per-pixel cross-entropy" in report
    (tmp_path / "segnet.py").unlink()  # the pruned model needs no user code
    kept = load_checkpoint(run / "iter_02" / "model.pt").model.eval()
    out = kept(torch.rand(2, 3, 24, 24))
    assert out["out"].shape == (2, 3, 24, 24)


def test_a_torchvision_segmentation_model_on_the_command_line(tmp_path: Path) -> None:
    _folder(tmp_path / "data", size=64)
    done = _cli(
        tmp_path, *COMMON, "--model", "torchvision:lraspp_mobilenet_v3_large",
        "--image-size", "64", "--epochs", "0", "--finetune-epochs", "0",
        "--max-iterations", "1", "--out", "runs/b", "--no-dpu", "--batch-size", "8",
        "--no-deploy",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())
    assert summary["iterations"][0]["flops_reduction"] > 0


def test_the_step_commands_on_a_segmentation_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _folder(tmp_path / "data", n_train=96)
    (tmp_path / "segnet.py").write_text(SEGNET)
    folder = ["--dataset", "imagefolder", "--data-dir", str(data)]
    pruned = tmp_path / "pruned"
    code = main(
        ["prune", "--model", f"{tmp_path / 'segnet.py'}:SegNet", "--task", "segmentation",
         "--input-size", "3,24,24", *folder, "--images", "4", "--evaluate", "--out", str(pruned)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "val mIoU %" in out and "test mIoU %" in out
    ckpt = str(pruned / "pruned.pt")
    assert load_checkpoint(ckpt).meta["metric"] == "mIoU"
    assert main(["evaluate", "--checkpoint", ckpt, *folder]) == 0  # the task from the checkpoint
    table = capsys.readouterr().out
    assert "mIoU %" in table and "accuracy" not in table
    deployed = tmp_path / "deployed"
    argv = ["deploy", "--checkpoint", ckpt, *folder, "--calibration-images", "16", "--no-latency"]
    assert main([*argv, "--out", str(deployed), "--no-progress"]) == 0
    record = json.loads((deployed / "deploy.json").read_text())
    assert record["metric"] == "mIoU" and record["parity"]["float_ok"]
    capsys.readouterr()
    refused = [
        (["train", "--checkpoint", ckpt, *folder, "--out", str(tmp_path / "t.pt")],
         "prunewise run --task segmentation trains and channel-prunes it"),
        (["evaluate", "--checkpoint", ckpt, *folder, "--task", "classification"],
         "is a segmentation folder (train/images/, train/masks/)"),
    ]  # fmt: skip
    (tmp_path / "halfres.py").write_text(
        SEGNET.replace("nn.Upsample(scale_factor=2.0", "nn.Upsample(scale_factor=1.0")
    )
    half = f"{tmp_path / 'halfres.py'}:SegNet"  # its maps are half the images' size
    refused += [
        (["prune", "--model", half, "--task", "segmentation", "--input-size", "3,24,24", *folder,
          "--images", "4", "--evaluate", "--out", str(tmp_path / "h")],
         "gives class maps of 12 x 12 for images of 24 x 24"),
        (["run", "--model", half, "--task", "segmentation", "--image-size", "24", *folder,
          "--no-deploy", "--out", str(tmp_path / "r")], "upsample its logits in its forward"),
    ]  # fmt: skip
    for argv, words in refused:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--dataset", "fashion-mnist"), "segmentation reads --dataset imagefolder"),
        (("--dataset", "imagefolder", "--data-dir", "nowhere"), "has no train/"),
        (("--dataset", "imagefolder", "--data-dir", "nomasks"), "no masks/ folder"),
    ],
)
def test_what_is_not_a_segmentation_folder_is_one_line(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    (tmp_path / "nomasks" / "train" / "images").mkdir(parents=True)
    (tmp_path / "nomasks" / "val" / "images").mkdir(parents=True)
    done = _cli(tmp_path, *args, "--out", "runs/x")
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_masks_load_with_their_images(tmp_path: Path) -> None:
    _folder(tmp_path / "data")
    data = load_segmentation(DataConfig(name="imagefolder", data_dir=tmp_path / "data",
                                        image_size=12, val_size=4, augment=False))  # fmt: skip
    assert data.num_classes == 3 and data.input_shape == (3, 12, 12)
    x, y = data.train[0]
    assert x.shape == (3, 12, 12) and y.shape == (12, 12) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {-100, 0, 1, 2} and (y[0] == -100).all()
    assert (len(data.train), len(data.val), len(data.test)) == (20, 4, 8)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "data" / "val" / "masks" / "0.png")
    with pytest.raises(Exception, match="a mask has the size of its image"):
        data.test[0]
    with pytest.raises(PrunewiseError, match=r"masks/0.png is 5 x 5, its image .* a mask has"):
        load_segmentation(DataConfig(name="imagefolder", data_dir=tmp_path / "data"))  # at once


def _set_pixel(mask_path: Path, value: int) -> None:
    mask = np.array(Image.open(mask_path))
    mask[5, 5] = value
    Image.fromarray(mask).save(mask_path)


def test_stray_mask_values_and_unknown_test_classes_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", n_train=6, n_val=3)
    config = DataConfig(name="imagefolder", data_dir=root, val_size=2)
    _set_pixel(root / "val" / "masks" / "1.png", 3)  # a class no training mask has
    with pytest.raises(PrunewiseError, match=r"val/masks/1.png holds class 3.*classes 0..2"):
        load_segmentation(config)
    _set_pixel(root / "train" / "masks" / "0.png", 200)  # one stray pixel of a resized mask
    with pytest.raises(PrunewiseError, match=r"use 4 class indices \(0, 1, 2, 200\).*201 classes"):
        load_segmentation(config)


def test_binary_masks_and_images_sharing_a_mask(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", n_train=6, n_val=3)
    config = DataConfig(name="imagefolder", data_dir=root, val_size=2)
    for split in ("train", "val"):  # object 255 on 0: 255 is the ignore value
        for mask in (root / split / "masks").glob("*.png"):
            on = np.array(Image.open(mask)) == 1
            Image.fromarray(np.where(on, 255, 0).astype(np.uint8)).save(mask)
    with pytest.raises(PrunewiseError, match=r"fewer than 2 classes.*0 and 255 masks"):
        load_segmentation(config)
    for split in ("train", "val"):  # 1-bit PNG masks: classes 0 and 1
        for mask in (root / split / "masks").glob("*.png"):
            Image.fromarray(np.array(Image.open(mask)) == 255).save(mask)
    assert load_segmentation(config).num_classes == 2
    Image.open(root / "train" / "images" / "0.jpg").save(root / "train" / "images" / "0.png")
    with pytest.raises(PrunewiseError, match=r"0.jpg and 0.png in .* would share the mask 0.png"):
        load_segmentation(config)


def test_confusion_matrix_counts_and_skips_ignored_pixels() -> None:
    pred = torch.tensor([0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 2, 2, -100])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    with pytest.raises(PrunewiseError, match="class maps are 2 x 2, the masks 4 x 4"):
        confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 4, 4), 3)


def test_mean_iou_of_a_model_that_always_says_background() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from prunewise.train import mean_iou

    class Background(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = torch.zeros(x.shape[0], 2, *x.shape[2:]) + self.w
            logits[:, 0] += 1
            return {"out": logits}

    y = torch.zeros(4, 2, 2, dtype=torch.int64)
    y[:, 1] = 1  # half the pixels are class 1
    loader = DataLoader(TensorDataset(torch.zeros(4, 1, 2, 2), y), batch_size=2)
    # class 0: IoU 8 / 16; class 1: 0 / 8 -> mean 25 %
    assert mean_iou(Background(), loader, 2) == pytest.approx(25.0)
