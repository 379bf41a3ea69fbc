"""`prunewise prune --scope`: a detector's backbone pruned in place from the command line; the
whole detector saved so that it rebuilds from torchvision, without pickles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunewise.data.datasets import FASHION_MNIST_DEFAULT_DIR
from prunewise.errors import PrunewiseError
from prunewise.io import load_checkpoint
from prunewise.pipeline.inputs import InputsConfig, load_inputs

DETECTOR = "torchvision:fasterrcnn_mobilenet_v3_large_fpn"
SMALL = ("--dataset", "synthetic", "--input-size", "3,64,64", "--limit", "32", "--images", "8")


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "prunewise", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


CHECK = """
import json

import torch
from prunewise.io import load_checkpoint
from prunewise.models import load_scoped_checkpoint

whole = load_scoped_checkpoint("out/pruned.pt")
part = load_checkpoint("out/scope.pt").model.eval()
x = torch.rand(2, 3, 64, 64)
with torch.no_grad():
    a, b = whole.model.backbone(x), part(x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "backbones differ"
    widths = {m.out_channels for m in whole.model.backbone.modules() if hasattr(m, "out_channels")}
    found = whole.model([torch.rand(3, 120, 160)])
assert isinstance(found, list) and {"boxes", "labels", "scores"} <= set(found[0])
heads = whole.model.roi_heads.box_predictor.cls_score.out_features
assert heads == 91, heads  # the builder's own classes (COCO), not the data's 10
print("scope", whole.scope, "convs", len(widths))
raw = torch.load("out/pruned.pt", weights_only=True)
source = json.loads(raw["source"])
source["model_args"] = '{"weights": "DEFAULT"}'  # would download other weights
raw["source"] = json.dumps(source)
torch.save(raw, "out/crafted.pt")
try:
    load_scoped_checkpoint("out/crafted.pt")
except Exception as exc:
    assert "downloads or reads other weights" in str(exc), exc
else:
    raise AssertionError("a builder argument from the file was used")
"""


def test_a_detector_backbone_pruned_from_the_command_line(tmp_path: Path) -> None:
    done = _cli(
        tmp_path, "prune", "--model", DETECTOR, "--scope", "backbone", *SMALL,
        "--importance", "l2", "--out", "out",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "whole model: out/pruned.pt" in done.stdout
    part = load_checkpoint(tmp_path / "out" / "scope.pt")
    assert part.meta["scope"] == "backbone"
    with pytest.raises(PrunewiseError, match="load_scoped_checkpoint"):
        load_checkpoint(tmp_path / "out" / "pruned.pt")
    (tmp_path / "check.py").write_text(CHECK)
    checked = subprocess.run(
        [sys.executable, "check.py"], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert checked.returncode == 0, checked.stderr
    assert "scope backbone" in checked.stdout


def test_without_scope_the_error_points_to_it(tmp_path: Path) -> None:
    done = _cli(tmp_path, "analyze", "--model", DETECTOR, *SMALL)
    assert done.returncode == 2
    assert "--scope" in done.stderr and "backbone" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_scope_the_model_lacks_is_one_line(tmp_path: Path) -> None:
    done = _cli(tmp_path, "analyze", "--model", DETECTOR, "--scope", "bakcbone", *SMALL)
    assert done.returncode == 2
    assert "has no module 'bakcbone'" in done.stderr and "backbone" in done.stderr
    inner = _cli(tmp_path, "analyze", "--model", DETECTOR, "--scope", "backbone.fpn", *SMALL)
    assert inner.returncode == 2 and len(inner.stderr.strip().splitlines()) == 1
    assert "--scope backbone.fpn is given the images themselves" in inner.stderr


def test_a_user_model_keeps_its_scope_checkpoint_only(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                                  nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU())\n"
        "        self.head = nn.Linear(8, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x).mean((2, 3)))\n"
    )
    done = _cli(tmp_path, "prune", "--model", "net.py:Net", "--scope", "body", *SMALL, "--out", "o")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "scope.pt").is_file() and not (tmp_path / "o" / "pruned.pt").exists()
    assert "no whole-model file" in done.stdout


@pytest.mark.skipif(
    not any(Path(FASHION_MNIST_DEFAULT_DIR).glob("train-images-idx3-ubyte*")),
    reason="Fashion-MNIST not installed",
)
def test_a_scope_keeps_the_model_s_input_channels_and_converts_gray_images() -> None:
    """The detector around the backbone normalises 3 channels: a 1-channel stem built for
    Fashion-MNIST made a whole model that ran on no image."""
    detector = "torchvision:ssdlite320_mobilenet_v3_large"
    config = InputsConfig(model=detector, model_scope="backbone", limit=40)
    loaded = load_inputs(config, scored=False)
    stem = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.in_channels == 3 and loaded.data.input_shape[0] == 3
    with torch.no_grad():
        found = loaded.model.eval()([torch.rand(3, 64, 80)])
    assert {"boxes", "labels", "scores"} <= set(found[0])
