"""`prunewise deploy`, `export` and `bench-latency`: what they write, and their bad-input errors."""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from prunewise.cli import main
from prunewise.export import CLASS_NAMES_KEY, exporter_of
from prunewise.io import load_checkpoint, save_checkpoint

SYNTHETIC = ["--dataset", "synthetic", "--limit", "200"]
FAST = ["--batch-sizes", "1", "--threads", "1", "--repeats", "3", "--warmup", "1"]


def _ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    _out, err = capsys.readouterr()
    assert code == 2, err
    assert not caught, [str(w.message) for w in caught]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prunewise: error: "), err
    return lines[0]


@pytest.fixture
def checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "base.pt"
    _ok(
        ["train", "--model", "vgg11_bn_small", "--width", "0.125", "--epochs", "1",
         "--no-progress", *SYNTHETIC, "--out", str(path)],
        capsys,
    )  # fmt: skip
    return path


def test_deploy_exits_1_when_onnx_runtime_computes_otherwise(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """The files are written and the check named, but a script must not go on (status 1)."""
    module = importlib.import_module("prunewise.export.deploy")  # the package names a function so
    monkeypatch.setattr(module, "FLOAT_TOLERANCE", -1.0)  # no error passes
    out_dir = tmp_path / "dep"
    code = main(
        ["deploy", "--checkpoint", str(checkpoint), *SYNTHETIC, "--calibration-images", "16",
         "--no-latency", "--no-progress", "--out", str(out_dir)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "warning: ONNX Runtime float logits differ from PyTorch" in err
    assert (out_dir / "model.onnx").is_file() and (out_dir / "model.int8.onnx").is_file()


def test_deploy_writes_checked_models_and_prints_tables(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "dep"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(
            ["deploy", "--checkpoint", str(checkpoint), *SYNTHETIC, "--calibration-images", "32",
             "--calibration", "mse", *FAST, "--no-progress", "--out", str(out_dir)]
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    said = out + err + " ".join(str(w.message) for w in caught)
    assert "deprecat" not in said.lower() and "torchscript" not in said.lower()
    assert "Deployment (test set)" in out and "ONNX Runtime latency" in out
    for name in ("model.onnx", "model.int8.onnx"):  # torch's maintained exporter wrote both
        assert exporter_of(onnx.load(out_dir / name)) == "dynamo"
    record = json.loads((out_dir / "deploy.json").read_text())
    assert record["parity"]["float_ok"] and record["parity"]["int8_ok"]
    assert record["config"]["int8"]["calibration"] == "mse"
    assert record["config"]["int8"]["weight_bits"] is None  # unset: 7 bits (Int8Config.bits)
    assert set(record["latency"]) == {"float", "int8"}
    quant = json.loads((out_dir / "quant.json").read_text())
    assert quant["format"] == "prunewise-int8/1" and quant["activations"]
    onnx.checker.check_model(onnx.load(out_dir / "model.int8.onnx"))


def test_export_float_and_int8_then_time_them(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fpath, qpath = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    _ok(["export", "--checkpoint", str(checkpoint), "--out", str(fpath)], capsys)
    names = onnxruntime.InferenceSession(fpath).get_modelmeta().custom_metadata_map
    assert json.loads(names[CLASS_NAMES_KEY]) == load_checkpoint(checkpoint).meta["class_names"]
    _ok(
        ["export", "--checkpoint", str(checkpoint), *SYNTHETIC, "--int8", "--power-of-two",
         "--calibration-images", "16", "--out", str(qpath)],
        capsys,
    )  # fmt: skip
    assert json.loads(qpath.with_suffix(".quant.json").read_text())["config"]["power_of_two"]
    result = tmp_path / "lat.json"
    out = _ok(["bench-latency", str(fpath), str(qpath), *FAST, "--json", str(result)], capsys)
    assert "median ms" in out
    latency = json.loads(result.read_text())["latency"]
    assert set(latency) == {str(fpath), str(qpath)}
    assert all(r["median_ms"] > 0 and r["batch"] == 1 for v in latency.values() for r in v)


def test_export_int8_by_onnx_runtime_on_request(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qpath = tmp_path / "m.int8.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), *SYNTHETIC, "--int8", "--calibration-images",
            "16", "--int8-backend", "onnxruntime", "--out", str(qpath)]  # fmt: skip
    out = _ok(argv, capsys)
    assert "by ONNX Runtime" in out and not qpath.with_suffix(".quant.json").exists()
    prunewise_first = ["--int8-backend", "prunewise", "--out", str(qpath)]
    _ok([*argv[: argv.index("--int8-backend")], *prunewise_first], capsys)
    assert qpath.with_suffix(".quant.json").exists()
    _ok(argv, capsys)  # ONNX Runtime's file again: prunewise's scales beside it are not its own
    assert not qpath.with_suffix(".quant.json").exists()
    _ok([*argv[: argv.index("--int8-backend")], *prunewise_first], capsys)
    _ok(["export", "--checkpoint", str(checkpoint), "--out", str(qpath)], capsys)  # float now
    assert not qpath.with_suffix(".quant.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".onnx"] == [qpath.name]
    onnx.checker.check_model(onnx.load(qpath))
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--int8-backend" in capsys.readouterr().out


class _DictOut(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.head, self.aux = nn.Linear(4, num_classes), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x).mean((2, 3))
        return {"out": self.head(y), "aux": self.aux(y)}


class _ValueBranch(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(in_channels, 4, 3), nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if x.min() >= 0:  # a branch on values: a trace of zeros would freeze it
            y = 2 * y
        return self.head(y.mean((2, 3)))


def test_export_writes_one_output_and_refuses_a_frozen_branch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "nets.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        + inspect.getsource(_DictOut)
        + "\n\n"
        + inspect.getsource(_ValueBranch)
    )
    model = ["--input-size", "3,16,16", "--dataset", "synthetic"]
    out = tmp_path / "d.onnx"
    _ok(
        ["export", "--model", f"{tmp_path / 'nets.py'}:_DictOut", *model, "--out", str(out)], capsys
    )
    assert [o.name for o in onnx.load(out).graph.output] == ["logits"]  # as deploy writes it
    bad = ["export", "--model", f"{tmp_path / 'nets.py'}:_ValueBranch", *model]
    line = _error([*bad, "--out", str(tmp_path / "b.onnx")], capsys)
    assert "computes other outputs than the model on random images" in line
    assert not (tmp_path / "b.onnx").exists()


def test_export_of_a_bare_model_asks_for_the_input_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _error(["export", "--model", "resnet20", "--out", str(tmp_path / "m.onnx")], capsys)
    assert "--input-size" in line and "unknown" in line
    _ok(
        ["export", "--model", "resnet18", "--input-size", "3,64,64", "--dataset", "synthetic",
         "--out", str(tmp_path / "r.onnx")],
        capsys,
    )  # fmt: skip
    assert (tmp_path / "r.onnx").stat().st_size > 1_000_000
    sized = ["--dataset", "synthetic", "--out", str(tmp_path / "d.onnx")]
    _ok(["export", "--model", "resnet20", *sized], capsys)  # the data's images size it
    session = onnxruntime.InferenceSession(str(tmp_path / "d.onnx"))
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32]
    bare = ["--input-size", "3,32,32", "--out", str(tmp_path / "tv.onnx")]
    _ok(["export", "--model", "torchvision:resnet18", *bare], capsys)  # no data read
    written = onnx.load(tmp_path / "tv.onnx")
    assert written.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 1000  # its own
    assert CLASS_NAMES_KEY not in {p.key for p in written.metadata_props}  # not Fashion-MNIST's


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--calibration-images", "8"], ["(--calibration-images) must be an integer in [16,"]),
        (["--calibration-images", "500"], ["more than the", "validation images"]),
        (["--percentile", "20"], ["(--percentile) must be a number in (50, 100]"]),
        (["--weight-bits", "9"], ["(--weight-bits) must be an integer in [2, 8] or unset"]),
        (["--repeats", "1"], ["repeats"]),
    ],
)
def test_deploy_bad_numbers(
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    fragments: list[str],
) -> None:
    line = _error(
        ["deploy", "--checkpoint", str(checkpoint), *SYNTHETIC, *extra, "--out",
         str(tmp_path / "d")],
        capsys,
    )  # fmt: skip
    assert all(f in line for f in fragments), line


def test_bench_latency_missing_and_garbage_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _error(["bench-latency", str(tmp_path / "none.onnx"), *FAST], capsys)
    assert "no such ONNX file" in line
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    line = _error(["bench-latency", str(junk), "--input-size", "1,8,8", *FAST], capsys)
    assert "not a valid ONNX model" in line


class _Upsampler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.up = nn.LocalResponseNorm(2)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.up(torch.relu(self.conv(x))).mean((2, 3)))


def test_deploy_of_an_unsupported_layer_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_checkpoint(
        tmp_path / "up.pt",
        _Upsampler(),
        input_shape=(1, 32, 32),
        meta={"dataset": "synthetic", "num_classes": 10},
    )
    line = _error(
        ["deploy", "--checkpoint", str(path), *SYNTHETIC, "--calibration-images", "16",
         "--out", str(tmp_path / "d")],
        capsys,
    )  # fmt: skip
    assert "LocalResponseNorm" in line and "'up'" in line and "register_quant_rule" in line
