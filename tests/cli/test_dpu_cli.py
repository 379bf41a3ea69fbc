"""`prunewise dpu` and `prunewise dpu-fit` from the command line, and their bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunewise.cli import main
from prunewise.hw.dpu import REFERENCE_CSV
from prunewise.io import save_checkpoint
from prunewise.models import build_model
from prunewise.prune import apply_plan, uniform_plan

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("dpu")
    torch.manual_seed(0)
    model = build_model("vgg11_bn_small", num_classes=10, in_channels=3, width=0.5).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 1.0)
    pruned = apply_plan(model, uniform_plan(model, 0.5, input_shape=SHAPE))
    a, b = folder / "base.pt", folder / "pruned.pt"
    save_checkpoint(a, model, input_shape=SHAPE)
    save_checkpoint(b, pruned, input_shape=SHAPE)
    return a, b


def test_dpu_profiles_a_registered_model(capsys) -> None:
    assert main(["dpu", "--model", "resnet18", "--board", "zcu104", "--threads", "1,2,4"]) == 0
    out = capsys.readouterr().out
    assert "resnet18 on zcu104" in out and "fps on zcu104" in out
    assert "layer1.0.conv1" in out and "GOP/s" in out
    fps_lines = [line for line in out.splitlines() if line.startswith("resnet18  ")]
    assert len(fps_lines) == 3  # one per thread count


def test_dpu_compares_a_pruned_checkpoint_and_writes_plot_and_json(
    pair: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    a, b = pair
    png, js = tmp_path / "five.png", tmp_path / "dpu.json"
    argv = ["dpu", "--checkpoint", str(a), "--compare", str(b), "--plot", str(png)]
    assert main([*argv, "--json", str(js), "--arch", "B1024"]) == 0
    out = capsys.readouterr().out
    assert "per subgraph" in out and "speed-up" in out
    assert png.read_bytes().startswith(b"\x89PNG")
    data = json.loads(js.read_text())
    base, pruned = data[f"{a.parent.name}/base.pt"], data[f"{b.parent.name}/pruned.pt"]
    assert base["arch"] == "B1024"
    assert pruned["total"]["gop"] < base["total"]["gop"]
    assert pruned["fps"]["1"] > base["fps"]["1"]


def test_dpu_fit_prints_leave_one_out_and_writes_constants(tmp_path: Path, capsys) -> None:
    toml = tmp_path / "fitted.toml"
    argv = ["dpu-fit", "--write", str(toml), "--json", str(tmp_path / "loo.json")]
    only = ["--reference", str(REFERENCE_CSV)]  # the unpruned rows (all: tests/hw/test_dpu_fit.py)
    assert main([*argv, *only]) == 0
    out = capsys.readouterr().out
    assert "held-out predictions" in out and "median |error| %" in out
    assert "unpruned, left out" in out and "pruned 0.5" not in out
    assert "[calibration]" in toml.read_text()
    assert main(["dpu", "--model", "vgg11_bn_small", "--devices", str(toml)]) == 0
    assert len(json.loads((tmp_path / "loo.json").read_text())["scored"]) == 24


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--board", "zcu999"], "unknown board 'zcu999'"),
        (["--arch", "B77"], "unknown DPU size 'B77'"),
        (["--threads", "0"], "dpu.threads (--dpu-threads) must be a non-empty list of integers"),
        (["--dpu-threads", "a,b"], "--threads: must be a non-empty list of integers in [1, 64]"),
        (["--input-size", "3,x"], "--input-size: must be C,H,W: positive integers"),
        (["--checkpoint", "none.pt"], "give --checkpoint or --model, not both"),
        (["--plot", f"{__file__}/x.png"], f"cannot write {__file__}/x.png: {__file__} is a file"),
        (["--json", str(Path(__file__).parent)], "it is a folder; give a file name"),
    ],
)
def test_bad_input_is_one_line(extra: list[str], message: str, capsys) -> None:
    try:
        code = main(["dpu", "--model", "vgg11_bn_small", *extra])
    except SystemExit as exc:  # argparse refuses a badly typed value itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "error:" in err.splitlines()[-1]


def test_bad_devices_file_names_the_key(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[board.zcu102]\nclock_mhz = -1\n")
    assert main(["dpu", "--model", "vgg11_bn_small", "--devices", str(bad)]) == 2
    assert "clock_mhz must be a number in (0, 10000], got -1" in capsys.readouterr().err
    assert main(["dpu", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
