"""Which output index is which class travels with the model: checkpoint and ONNX files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from prunewise.cli import main
from prunewise.export import CLASS_NAMES_KEY
from prunewise.io import load_checkpoint
from tests.data.test_folder import CLASSES, _tree

SMALL = ["--model", "vgg11_bn_small", "--width", "0.125", "--input-size", "3,32,32"]


def test_class_names_are_stored_and_a_renamed_class_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _tree(tmp_path / "images", per_class=30, test_per_class=6)
    folder = ["--dataset", "imagefolder", "--data-dir", str(data)]
    ckpt = tmp_path / "base.pt"
    assert main(["train", *SMALL, *folder, "--epochs", "0", "--out", str(ckpt)]) == 0
    assert load_checkpoint(ckpt).meta["class_names"] == list(CLASSES)
    out = tmp_path / "deploy"
    argv = ["deploy", "--checkpoint", str(ckpt), *folder, "--calibration-images", "16"]
    assert main([*argv, "--no-latency", "--out", str(out)]) == 0
    for name in ("model.onnx", "model.int8.onnx"):
        meta = ort.InferenceSession(str(out / name)).get_modelmeta().custom_metadata_map
        assert json.loads(meta[CLASS_NAMES_KEY]) == list(CLASSES)
    for split in ("train", "val"):  # a class folder renamed: output 2 would mean another class
        shutil.move(data / split / "eel", data / split / "zebra")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), *folder]) == 2
    err = capsys.readouterr().err
    assert "was trained on the classes cat, dog, eel, the data's are cat, dog, zebra" in err
    r2 = tmp_path / "r2"
    refusals = (  # the checkpoint as a run's baseline, or as --weights of run and analyze
        ["run", "--no-deploy", "--baseline", str(ckpt), *folder, "--out", str(tmp_path / "r1")],
        ["run", "--no-deploy", *SMALL[:4], "--weights", str(ckpt), *folder, "--out", str(r2)],
        ["analyze", *SMALL, "--weights", str(ckpt), *folder],
    )
    for argv in refusals:
        assert main(argv) == 2, argv
        assert "trained on the classes cat, dog, eel" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists() and not r2.exists()
