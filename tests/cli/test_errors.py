"""Bad input ends in one line `prunewise: error: ...` and exit status 2, never a traceback.

Most cases run `prunewise.cli.main` in this process on the synthetic dataset; two run the real
console script and `python -m prunewise` in a subprocess, where warnings would reach stderr too.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunewise.cli import main
from prunewise.data import FASHION_MNIST_FILES, write_idx
from prunewise.errors import PrunewiseError
from prunewise.io import save_checkpoint
from prunewise.models import build_model, check_input_fits

SYNTHETIC = ["--dataset", "synthetic"]
SMALL = ["--model", "vgg11_bn_small", "--width", "0.125"]
ROOT = Path(__file__).resolve().parents[2]


def _one_error_line(code: int, err: str) -> str:
    """Assert exit status 2 and exactly one `prunewise: error:` line; return that line."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("prunewise: error: ")
    assert len(lines[0]) > len("prunewise: error: ") + 10
    return lines[0]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; assert the error contract (no warning either); return the line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    _out, err = capsys.readouterr()
    assert not caught, [str(w.message) for w in caught]
    return _one_error_line(code, err)


def _assert_names(line: str, fragments: list[str]) -> None:
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} missing from: {line}"


# --- model name, BatchNorm, input shape ------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "evaluate", "analyze", "prune"])
def test_unknown_model_name(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--model", "nosuchnet", *SYNTHETIC, "--out", str(tmp_path / "o")]
    if command == "evaluate":  # evaluate scores a trained model: the name is said first
        missing = [command, "--checkpoint", str(tmp_path / "nosuchnet.pt"), *SYNTHETIC]
        _assert_names(_fails(missing, capsys), ["nosuchnet.pt", "does not exist"])
    if command in ("analyze", "evaluate"):
        argv = argv[:-2]
    line = _fails(argv, capsys)
    _assert_names(line, ["unknown model 'nosuchnet'", "prunewise models"])


@pytest.mark.parametrize("command", ["analyze", "prune"])
def test_model_without_batchnorm_has_nothing_to_prune(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--model", "squeezenet1_1", *SYNTHETIC, "--images", "4"]
    if command == "prune":
        argv += ["--out", str(tmp_path / "step")]
    line = _fails(argv, capsys)
    _assert_names(line, ["squeezenet1_1", "no BatchNorm", "nothing to prune by |gamma|"])
    assert not (tmp_path / "step").exists()


def test_a_batchnorm_written_by_hand_ranks_by_gamma(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal reads the channel graph: a user's own BatchNorm (F.batch_norm on its own
    buffers) has a gamma to rank by, though it is no torch.nn BatchNorm (it was refused)."""
    (tmp_path / "net.py").write_text(HAND_BN)
    argv = ["prune", "--model", f"{tmp_path / 'net.py'}:Net", *SYNTHETIC, "--images", "4"]
    assert main([*argv, "--out", str(tmp_path / "step")]) == 0, capsys.readouterr().err
    plan = json.loads((tmp_path / "step" / "plan.json").read_text())
    assert plan["policy"]["importance"] == "bn-gamma"
    assert any(len(g["kept"]) < g["channels"] for g in plan["groups"])


HAND_BN = """
import torch
import torch.nn.functional as F
from torch import nn


class HandBN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.1)
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("var", torch.ones(c))

    def forward(self, x):
        return F.batch_norm(x, self.mean, self.var, self.weight, self.bias, self.training)


class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(in_channels, 16, 3, padding=1), HandBN(16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1), HandBN(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.n2(self.c2(self.n1(self.c1(x)).relu())).relu()
        return self.fc(x.mean((2, 3)))
"""


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (
            [*SMALL, "--input-size", "3,8,8"],
            ["input shape (3, 8, 8) does not fit the model", "MaxPool2d", "--input-size"],
        ),
        (
            ["--model", "alexnet", "--input-size", "3,32,32"],
            ["input shape (3, 32, 32) does not fit the model", "features.12", "too small"],
        ),
        (["--model", "alexnet"], ["does not fit the model", "synthetic images are (3, 32, 32)"]),
        (["--model", "resnet18", "--input-size", "1,32,32"], ["takes 3 input channels"]),
        ([*SMALL, "--input-size", "3,32,32,32"], ["--input-size 3,32,32,32", "C,H,W"]),
        ([*SMALL, "--input-size", "2,32,32"], ["--input-size 2,32,32", "1 (grayscale)"]),
        ([*SMALL, "--input-size", "abc"], ["--input-size", "'abc'", "C,H,W"]),
        ([*SMALL, "--input-size", "3,0,32"], ["--input-size", "positive"]),
    ],
)
def test_input_shape_that_does_not_fit(
    extra: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fails(["analyze", *extra, *SYNTHETIC, "--images", "2"], capsys)
    _assert_names(line, fragments)


@pytest.fixture(scope="module")
def gray_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prunewise checkpoint of an untrained 1-channel model for (1, 32, 32) input."""
    model = build_model("vgg11_bn_small", num_classes=10, in_channels=1, width=0.125)
    path = tmp_path_factory.mktemp("ck") / "gray.pt"
    meta = {"model": "vgg11_bn_small", "dataset": "synthetic", "num_classes": 10}
    return save_checkpoint(path, model, input_shape=(1, 32, 32), meta=meta)


def test_checkpoint_with_an_input_size_of_other_channels(
    gray_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--checkpoint", str(gray_checkpoint), "--input-size", "3,32,32"]
    line = _fails(argv, capsys)
    _assert_names(
        line,
        [
            "(3, 32, 32) does not fit",
            "features.0 (Conv2d) takes 1 input channel, gets 3",
            "made for (1, 32, 32)",
        ],
    )


def test_incomplete_cifar_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cifar-100-python").mkdir()
    argv = ["analyze", *SMALL, "--dataset", "cifar100", "--data-dir", str(tmp_path)]
    _assert_names(_fails(argv, capsys), ["CIFAR-100", "incomplete or corrupt", "re-extract"])


# --- policy options and other numbers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "fragments"),
    [
        ("--alpha", "0", ["(--alpha) must be a number in (0, 1]", "got 0.0"]),
        ("--alpha", "1.5", ["(--alpha) must be a number in (0, 1]", "got 1.5"]),
        ("--alpha", "nan", ["(--alpha) must be a number in (0, 1]", "got nan"]),
        ("--beta", "-0.1", ["(--beta) must be a number in (0, 1]", "got -0.1"]),
        ("--beta", "2", ["(--beta) must be a number in (0, 1]", "got 2.0"]),
        ("--images", "0", ["(--images) must be an integer in [1, 1000000]", "got 0"]),
        ("--limit", "0", ["(--limit) must be an integer in [1, 1000000000]", "got 0"]),
        ("--batch-size", "0", ["(--batch-size) must be an integer in [1, 65536]", "got 0"]),
        ("--seed", "-1", ["(--seed) must be an integer in [0, 2^63-1]", "got -1"]),
        ("--seed", str(2**64), ["(--seed) must be an integer in [0, 2^63-1]"]),
        ("--min-channels", "0", ["(--min-channels) must be an integer in [1, 65536]"]),
        ("--round-to", "0", ["(--round-to) must be an integer in [1, 4096]"]),
        ("--min-sparsity", "1", ["(--min-sparsity) must be a number in [0, 1)"]),
    ],
)
@pytest.mark.parametrize("command", ["analyze", "prune"])
def test_bad_policy_and_analysis_numbers(
    command: str,
    option: str,
    value: str,
    fragments: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [command, *SMALL, *SYNTHETIC, option, value]
    if command == "prune":
        argv += ["--out", str(tmp_path / "step")]
    _assert_names(_fails(argv, capsys), fragments)
    assert not (tmp_path / "step").exists()


@pytest.mark.parametrize(
    ("option", "value", "fragments"),
    [
        ("--epochs", "-1", ["(--epochs) must be an integer in [0, 100000]", "got -1"]),
        ("--batch-size", "0", ["(--batch-size) must be an integer in [1, 65536]", "got 0"]),
        ("--batch-size", "-5", ["(--batch-size) must be an integer in [1, 65536]", "got -5"]),
        ("--lr", "0", ["(--lr) must be a number in (0, 10]", "got 0.0"]),
        ("--lr", "inf", ["(--lr) must be a number in (0, 10]", "got inf"]),
        ("--weight-decay", "-1", ["(--weight-decay) must be a number in [0, 1]"]),
        ("--limit", "-3", ["(--limit) must be an integer in [1,", "got -3"]),
        ("--width", "0", ["(--width) must be a number in (0, 4]", "got 0.0"]),
        ("--seed", str(10**20), ["(--seed) must be an integer in [0, 2^63-1]"]),
    ],
)
def test_bad_training_numbers(
    option: str,
    value: str,
    fragments: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "model.pt"
    argv = ["train", *SMALL, *SYNTHETIC, "--no-progress", option, value, "--out", str(out)]
    _assert_names(_fails(argv, capsys), fragments)
    assert not out.exists()


def test_more_images_than_the_limit_leaves(capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(["analyze", *SMALL, *SYNTHETIC, "--limit", "30", "--images", "50"], capsys)
    _assert_names(line, ["--images 50", "30 validation images (capped by --limit)"])


def test_bad_batch_size_on_evaluate(
    gray_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fails(["evaluate", "--checkpoint", str(gray_checkpoint), "--batch-size", "0"], capsys)
    _assert_names(line, ["(--batch-size) must be an integer in [1, 65536]"])


# --- dataset files ---------------------------------------------------------------------------


def _write_fashion_mnist(directory: Path, *, gz: bool = False) -> dict[str, Path]:
    """Four small, valid Fashion-MNIST IDX files; returns base name -> path."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(40, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(20, dtype=np.uint8) % 10,
    }
    assert set(arrays) == set(FASHION_MNIST_FILES)
    suffix = ".gz" if gz else ""
    return {k: write_idx(directory / f"{k}{suffix}", v) for k, v in arrays.items()}


@pytest.mark.parametrize(
    ("argv", "word"),
    [(["dpu", "--device", "cuda"], "--device"), (["analyze", "--wid", "0.5"], "--wid")],
)
def test_an_option_is_never_taken_for_a_longer_one(
    argv: list[str], word: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:  # dpu --device was --devices FILE, --wid --width
        main(argv)
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {word}" in capsys.readouterr().err


def test_missing_data_dir(capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(["analyze", *SMALL, "--data-dir", "/nonexistent"], capsys)
    _assert_names(line, ["/nonexistent", "does not exist", "--data-dir"])


def test_data_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notadir"
    path.write_text("x")
    line = _fails(["analyze", *SMALL, "--data-dir", str(path)], capsys)
    _assert_names(line, [str(path), "is a file, not a directory"])


def test_data_dir_without_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(["analyze", *SMALL, "--data-dir", str(tmp_path)], capsys)
    _assert_names(line, ["train-images-idx3-ubyte", "missing", str(tmp_path)])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _bad_magic(path: Path) -> None:
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(3000))


def _broken_gzip(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("garble", "gz", "fragments"),
    [
        (_truncate, False, ["truncated: 100 bytes"]),
        (_bad_magic, False, ["bad magic number"]),
        (_garbage, False, ["not an IDX file"]),
        (_broken_gzip, True, ["broken gzip stream"]),
    ],
)
def test_corrupt_idx_file(
    garble: Callable[[Path], None],
    gz: bool,
    fragments: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = _write_fashion_mnist(tmp_path, gz=gz)
    garble(paths["train-images-idx3-ubyte"])
    line = _fails(["analyze", *SMALL, "--data-dir", str(tmp_path), "--images", "2"], capsys)
    _assert_names(line, [str(paths["train-images-idx3-ubyte"]), "corrupt", *fragments])


def test_idx_files_that_do_not_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _write_fashion_mnist(tmp_path)
    write_idx(paths["train-labels-idx1-ubyte"], np.zeros(7, dtype=np.uint8))
    line = _fails(["analyze", *SMALL, "--data-dir", str(tmp_path), "--images", "2"], capsys)
    _assert_names(line, ["7 labels for 40 images"])


def test_valid_small_idx_files_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The corrupt-file cases above differ from a working folder only by the damage."""
    _write_fashion_mnist(tmp_path, gz=True)
    assert main(["analyze", *SMALL, "--data-dir", str(tmp_path), "--images", "2"]) == 0
    out, _err = capsys.readouterr()
    assert "FLOPs" in out


# --- checkpoints -----------------------------------------------------------------------------


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(2048))


def _state_dict(path: Path) -> None:
    model = build_model("vgg11_bn_small", num_classes=10, in_channels=1, width=0.125)
    torch.save(model.state_dict(), path)


def _whole_model(path: Path) -> None:
    torch.save(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), path)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("this is not a checkpoint\n")


def _tensor_list(path: Path) -> None:
    torch.save([torch.zeros(2)], path)


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (_random_bytes, ["is not a prunewise checkpoint", "torch.load cannot read it"]),
        (_state_dict, ["is a plain state dict", "no architecture", "save_checkpoint"]),
        (_whole_model, ["is not a prunewise checkpoint", "pickled Python objects"]),
        (_empty, ["is not a prunewise checkpoint", "empty"]),
        (_text, ["is not a prunewise checkpoint", "torch.load cannot read it"]),
        (_tensor_list, ["is not a prunewise checkpoint", "prunewise-checkpoint/1"]),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "analyze", "prune"])
def test_file_that_is_not_a_prunewise_checkpoint(
    command: str,
    make: Callable[[Path], None],
    fragments: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "model.pt"
    make(path)
    argv = [command, "--checkpoint", str(path), *SYNTHETIC]
    if command == "prune":
        argv += ["--out", str(tmp_path / "step")]
    _assert_names(_fails(argv, capsys), [str(path), *fragments])


def test_truncated_prunewise_checkpoint(
    gray_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cut.pt"
    data = gray_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    line = _fails(["evaluate", "--checkpoint", str(path)], capsys)
    _assert_names(line, [str(path), "not a prunewise checkpoint", "truncated"])


@pytest.mark.parametrize("command", ["evaluate", "analyze", "prune"])
def test_missing_checkpoint(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing.pt"
    argv = [command, "--checkpoint", str(path), *SYNTHETIC]
    if command == "prune":
        argv += ["--out", str(tmp_path / "step")]
    _assert_names(_fails(argv, capsys), [f"checkpoint {path} does not exist"])


def test_checkpoint_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(["evaluate", "--checkpoint", str(tmp_path)], capsys)
    _assert_names(line, [str(tmp_path), "is a directory"])


# --- outputs and plans -----------------------------------------------------------------------


def test_train_out_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", *SMALL, *SYNTHETIC, "--epochs", "0", "--out", str(tmp_path)]
    _assert_names(_fails(argv, capsys), [f"--out {tmp_path} is a directory", "baseline.pt"])


def test_prune_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    line = _fails(["prune", *SMALL, *SYNTHETIC, "--out", str(out)], capsys)
    _assert_names(line, [f"--out {out} is a file"])


def test_output_that_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker / "analysis.json"  # a path under a regular file
    line = _fails(["analyze", *SMALL, *SYNTHETIC, "--images", "2", "--out", str(out)], capsys)
    _assert_names(line, [f"cannot write {out}"])


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("command", ["analyze", "prune", "deploy", "train", "export --int8"])
def test_an_output_that_cannot_be_created_is_refused_before_any_work(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model and data were loaded before --out was checked")

    monkeypatch.setattr("prunewise.pipeline.inputs.pick_device", no_work)
    out = "/proc/prunewise-nowhere/out"  # root may write anywhere but there
    line = _fails([*command.split(), *SMALL, *SYNTHETIC, "--out", out], capsys)
    _assert_names(line, [f"cannot write {out}", "writable location"])


def test_missing_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.json"
    argv = ["prune", *SMALL, *SYNTHETIC, "--plan", str(plan), "--out", str(tmp_path / "s")]
    _assert_names(_fails(argv, capsys), [f"plan {plan} does not exist"])


def test_plan_made_for_another_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first"
    argv = ["prune", "--model", "resnet20", "--width", "0.5", *SYNTHETIC, "--images", "4"]
    assert main([*argv, "--out", str(first)]) == 0
    capsys.readouterr()
    plan = first / "plan.json"
    line = _fails(
        ["prune", *SMALL, *SYNTHETIC, "--plan", str(plan), "--out", str(tmp_path / "s")], capsys
    )
    _assert_names(line, ["the plan names channel groups this model does not have", "--plan"])


# --- the real executables --------------------------------------------------------------------


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False
    )


def test_python_dash_m_prints_one_line() -> None:
    done = _run([sys.executable, "-m", "prunewise", "analyze", "--model", "nosuchnet"])
    line = _one_error_line(done.returncode, done.stderr)
    _assert_names(line, ["unknown model 'nosuchnet'"])
    assert done.stdout == ""


def test_console_script_prints_one_line_for_a_pickled_file(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("prunewise")
    command = [str(script)] if script.is_file() else [shutil.which("prunewise") or ""]
    if not command[0]:
        pytest.skip("the prunewise console script is not installed next to this Python")
    path = tmp_path / "plain.pt"  # protocol 4 makes torch.load warn: it must not reach stderr
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    done = _run([*command, "evaluate", "--checkpoint", str(path), "--dataset", "synthetic"])
    line = _one_error_line(done.returncode, done.stderr)
    _assert_names(line, [str(path), "not a prunewise checkpoint"])


# --- non-finite weights -------------------------------------------------------------------


@pytest.fixture(scope="module")
def poisoned(gray_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the gray checkpoint with a NaN conv weight and an infinite BatchNorm gamma."""
    out = {}
    for label, key, value in (
        ("nan", "features.0.weight", float("nan")),
        ("inf", "features.1.weight", float("inf")),
    ):
        raw = torch.load(gray_checkpoint, weights_only=True)
        raw["state_dict"][key] = raw["state_dict"][key].clone()
        raw["state_dict"][key][0] = value
        path = tmp_path_factory.mktemp(label) / "m.pt"
        torch.save(raw, path)
        out[label] = path
    return out


@pytest.mark.parametrize("label", ["nan", "inf"])
@pytest.mark.parametrize("command", ["evaluate", "analyze", "prune", "deploy", "export", "run"])
def test_a_checkpoint_with_non_finite_weights_is_refused(
    command: str,
    label: str,
    poisoned: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = poisoned[label]
    out = tmp_path / "out"
    argv = {
        "evaluate": ["evaluate", "--checkpoint", str(path), *SYNTHETIC],
        "analyze": ["analyze", "--checkpoint", str(path), *SYNTHETIC],
        "prune": ["prune", "--checkpoint", str(path), *SYNTHETIC, "--out", str(out)],
        "deploy": ["deploy", "--checkpoint", str(path), *SYNTHETIC, "--out", str(out)],
        "export": ["export", "--int8", "--checkpoint", str(path), *SYNTHETIC, "--out", str(out)],
        "run": ["run", "--baseline", str(path), *SYNTHETIC, "--no-deploy", "--out", str(out)],
    }[command]
    tensor = "features.0.weight' holds NaN" if label == "nan" else "features.1.weight' holds an"
    _assert_names(_fails(argv, capsys), [str(path), tensor])
    assert not out.exists()


@pytest.mark.parametrize("command", ["analyze", "prune", "run"])
def test_a_weights_file_with_non_finite_values_is_refused_on_load(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = build_model("vgg11_bn_small", num_classes=10, width=0.125).state_dict()
    state["features.1.running_var"][2] = float("nan")
    path = tmp_path / "w.pt"
    torch.save(state, path)
    out = tmp_path / "out"
    argv = [command, *SMALL, "--weights", str(path), *SYNTHETIC]
    argv += [] if command == "analyze" else ["--out", str(out)]
    argv += ["--no-deploy"] if command == "run" else []
    _assert_names(_fails(argv, capsys), [str(path), "features.1.running_var' holds NaN"])
    assert not out.exists()


# --- sizes that cannot be trained or held in memory ----------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["train", *SMALL, *SYNTHETIC, "--limit", "1"], ["training set has 1 image"]),
        (["analyze", *SMALL, "--input-size", "1,100000,100000"], ["--input-size", "too large"]),
        (["export", "--model", "resnet18", "--input-size", "3,100000,100000"], ["too large"]),
        (
            ["analyze", "--model", "vgg13_bn_small", *SYNTHETIC, "--input-size", "1,16384,16384"],
            ["synthetic images of 1x16384x16384 need about", "GB to make, more than the"],
        ),
    ],
)
def test_sizes_that_cannot_work_are_one_line(
    argv: list[str], fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    _assert_names(_fails([*argv, "--out", str(out)], capsys), fragments)
    assert not out.exists()


def test_an_input_whose_activations_exceed_memory_is_refused_without_allocating() -> None:
    model = build_model("vgg13_bn_small", num_classes=10, in_channels=1, width=0.25)
    with pytest.raises(PrunewiseError, match=r"needs .* GB of activations for a single image"):
        check_input_fits(model, (1, 16384, 16384))
    check_input_fits(model, (1, 32, 32))


def _user_net(tmp_path: Path, forward: str) -> list[str]:
    """--model options of a user's file whose Net has a conv, a linear head and `forward`."""
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=3):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(in_channels, 8, 3)\n"
        "        self.fc = nn.Linear(8, num_classes)\n\n"
        f"{forward}"
    )
    return ["--model", f"{tmp_path / 'net.py'}:Net", *SYNTHETIC]


@pytest.mark.parametrize(
    ("returns", "named"),
    [("(y, y)", "returns tuple"), ('{"logits": y}', "a dict with keys ['logits']")],
)
def test_an_output_nothing_can_score_is_one_line_before_any_work(
    returns: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forward = "    def forward(self, x):\n        y = self.fc(self.conv(x).mean((2, 3)))\n"
    model = _user_net(tmp_path, f"{forward}        return {returns}\n")
    out = tmp_path / "out"
    line = _fails(["prune", *model, "--evaluate", "--images", "4", "--out", str(out)], capsys)
    _assert_names(line, [named, "wrap it in a module whose forward returns the class scores"])
    assert not out.exists()  # evaluate crashed with 'dict' object has no attribute 'argmax'


def test_a_model_of_two_inputs_is_told_to_wrap_or_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forward = (
        "    def forward(self, x, y):\n        return self.fc((self.conv(x) + y).mean(3).mean(2))\n"
    )
    line = _fails(["analyze", *_user_net(tmp_path, forward)], capsys)
    _assert_names(line, ["Net.forward takes 2 inputs (x, y)", "wrap it", "--scope"])
    assert "--input-size" not in line  # no input size would make it fit
