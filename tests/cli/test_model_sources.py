"""`--model SOURCE --model-args JSON --weights FILE` on the command line (issue 15, item 1)."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from prunewise.cli import main
from prunewise.models import build_model

NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, hidden=16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.bn = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))
"""
FAST = [
    "--dataset", "synthetic", "--limit", "96", "--epochs", "1", "--finetune-epochs", "0",
    "--max-iterations", "1", "--no-deploy", "--no-dpu", "--group-experiment", "0",
    "--images", "4", "--no-progress", "--no-report",
]  # fmt: skip


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "code" / "net.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(NET))
    return path


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_run_a_model_from_a_user_file(net_file: Path, tmp_path: Path) -> None:
    before = list(sys.path)
    out = tmp_path / "run"
    argv = ["run", *FAST, "--model", f"{net_file}:Net", "--model-args", '{"hidden": 12}']
    assert main([*argv, "--out", str(out)]) == 0
    assert sys.path == before
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["name"] == f"{net_file}:Net" and json.loads(config["args"]) == {"hidden": 12}
    assert (out / "baseline" / "model.pt").is_file()


def test_run_from_trained_weights_with_a_ddp_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = torchvision.models.resnet18(num_classes=10)
    trained.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # trained on grayscale images
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 5}, tmp_path / "w.pt")
    out = tmp_path / "run"
    argv = ["run", *FAST, "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt")]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "baseline" / "metrics.json").read_text())
    assert metrics["epochs"] == [] and metrics["source"] == str(tmp_path / "w.pt")  # not trained
    analysis = json.loads((out / "baseline" / "analysis.json").read_text())
    assert analysis["input_shape"][0] == 1  # the weights' stem decided the data's channels


def test_run_from_weights_of_other_classes_with_a_new_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "w.pt")
    out = tmp_path / "run"
    argv = ["run", *FAST, "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt")]
    assert main([*argv, "--new-head", "--out", str(out)]) == 0
    metrics = json.loads((out / "baseline" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and metrics["source"] == str(tmp_path / "w.pt")
    assert json.loads((out / "config.json").read_text())["model"]["new_head"] is True
    step = ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt"), "--new-head"]
    with pytest.raises(SystemExit, match="2"):  # analyze does not train: no --new-head there
        main(["analyze", *step, "--dataset", "synthetic"])


def test_run_a_timm_model(tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="timm is not installed: the timm: source is skipped")
    out = tmp_path / "run"
    argv = ["run", *FAST, "--model", "timm:resnet10t", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["model"]["name"] == "timm:resnet10t"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s.pop("conv.weight"), "1 missing \\(conv.weight\\)"),
        (lambda s: s.__setitem__("conv.weight", torch.zeros(16, 3, 5, 5)), "of another shape"),
        (
            lambda s: s.update({"fc.weight": torch.zeros(1000, 16), "fc.bias": torch.zeros(1000)}),
            "1000-class head",
        ),
    ],
)
def test_weights_that_do_not_fit_leave_nothing(
    net_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change, words: str
) -> None:
    sys.path.insert(0, str(net_file.parent))
    sys.modules.pop("net", None)  # another test's module named net
    try:
        from net import Net  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(net_file.parent))
        sys.modules.pop("net", None)
    state = dict(Net().state_dict())
    change(state)
    torch.save(state, tmp_path / "w.pt")
    out = tmp_path / "run"
    argv = ["run", *FAST, "--model", f"{net_file}:Net", "--weights", str(tmp_path / "w.pt")]
    err = _refused([*argv, "--out", str(out)], capsys)
    assert re.search(words, err), err
    assert not out.exists()


def test_a_whole_pickled_model_is_read_without_its_code(
    net_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10), tmp_path / "whole.pt")
    out = tmp_path / "analysis.json"
    argv = ["analyze", "--dataset", "synthetic", "--limit", "64", "--images", "2"]
    weights = ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "whole.pt")]
    assert main([*argv, *weights, "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["params"] == 11_181_642


PER_PIXEL = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        return self.head(self.conv(x).relu())
"""
SYNTH = ["--dataset", "synthetic", "--input-size", "3,16,16", "--limit", "64"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["deploy", "--calibration-images", "16", "--no-latency", "--out", "o"],
         "gives \\(10, 16, 16\\) per image, a classifier one score per class.*--task segmentation"),
        (["prune", "--evaluate", "--out", "o"], "--task segmentation"),
        (["run", *FAST, "--out", "o"], "--task segmentation"),
        (["deploy", "--model-args", '{"num_classes": 4}', "--out", "o"],
         "gives 4 class scores per image .* the data have 10 classes"),
    ],
)  # fmt: skip
def test_a_model_whose_output_does_not_fit_the_task_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    (tmp_path / "net.py").write_text(PER_PIXEL if "--task" in words else NET)
    model = ["--model", f"{tmp_path / 'net.py'}:Net"]
    out = tmp_path / "o"
    data = [] if argv[0] == "run" else SYNTH  # FAST has run's data
    args = [*argv[:1], *model, *data, *[str(out) if a == "o" else a for a in argv[1:]]]
    err = _refused(args, capsys)
    assert re.search(words, err), err
    assert not out.exists()


def test_a_plan_that_removes_nothing_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gelu.py").write_text(NET.replace("torch.relu(", "nn.functional.gelu("))
    argv = ["analyze", "--model", f"{tmp_path / 'gelu.py'}:Net", *SYNTH, "--images", "4"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "the plan removes nothing" in err and "GELU" in err and "--ratio R" in err, err
    out = tmp_path / "p"
    assert main(["prune", *argv[1:], "--ratio", "0.5", "--out", str(out)]) == 0
    decisions = json.loads((out / "plan.json").read_text())["groups"]
    assert any(d["reason"].startswith("uniform: P=0.500") for d in decisions), decisions


def test_a_wrong_input_size_is_one_line_in_the_dpu_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = "import torch.nn as nn\nNet = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), "
    (tmp_path / "flat.py").write_text(flat + "nn.Linear(4 * 30 * 30, 10))\n")
    argv = ["dpu", "--model", f"{tmp_path / 'flat.py'}:Net", "--input-size", "3,28,28"]
    assert "does not fit the model" in _refused(argv, capsys)  # torch.fx's traceback hidden


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--model", "torchvision:resnet1888"], "close matches: resnet18"),
        (["--model", "nowhere/net.py:Net"], "does not exist"),
        (["--model", "torchvision:resnet18", "--model-args", "{bad"], "JSON object"),
        (["--model", "vgg11_bn_small", "--model-args", '{"a": 1}'], "registered model"),
        (["--weights", "a.pt", "--baseline", "b.pt"], "give one of them"),
    ],
)
def test_bad_sources_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    out = tmp_path / "run"
    err = _refused(["run", *FAST, *extra, "--out", str(out)], capsys)
    assert words in err and not out.exists()


def test_step_commands_take_sources_and_weights(
    net_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "analysis.json"
    argv = ["analyze", "--dataset", "synthetic", "--limit", "64", "--images", "2"]
    code = main([*argv, "--model", f"{net_file}:Net", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "the plan removes nothing" in capsys.readouterr().err  # the fc reads pooled values
    assert json.loads(out.read_text())["params"] > 0
    err = _refused([*argv, "--model", f"{net_file}:Net", "--weights", str(tmp_path)], capsys)
    assert "is a directory; give the file inside it" in err
    weights = tmp_path / "w.pt"
    torch.save(
        build_model("vgg11_bn_small", width=0.0625, num_classes=10, in_channels=3).state_dict(),
        weights,
    )
    scored = ["evaluate", "--dataset", "synthetic", "--limit", "64", "--model", "vgg11_bn_small"]
    assert main([*scored, "--width", "0.0625", "--weights", str(weights)]) == 0
    assert "top-1 %" in capsys.readouterr().out
    assert "scores a trained model: give --checkpoint, or --model with --weights" in _refused(
        scored, capsys
    )
