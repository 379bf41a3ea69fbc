"""A refused run writes nothing; a working run holds its folder; a failed one says so."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from prunewise.cli import main
from prunewise.errors import PrunewiseError, Stopped
from prunewise.io import save_checkpoint
from prunewise.models import build_model
from prunewise.pipeline import RunConfig, RunFolder, run_pipeline

FAST = [
    "--dataset", "synthetic", "--model", "vgg11_bn_small", "--width", "0.0625", "--epochs", "1",
    "--finetune-epochs", "0", "--max-iterations", "1", "--no-deploy", "--no-dpu",
    "--group-experiment", "0", "--images", "4", "--no-progress",
]  # fmt: skip
SMALL_DATA = {"name": "synthetic", "synthetic_train": 64, "synthetic_test": 32}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.pt"
    path.write_text("not a checkpoint\n")
    return path


def _ten_class_baseline(tmp_path: Path) -> Path:
    model = build_model("vgg11_bn_small", num_classes=7, in_channels=3, width=0.0625)
    meta = {"num_classes": 7, "dataset": "synthetic"}
    return save_checkpoint(tmp_path / "b7.pt", model, input_shape=(3, 32, 32), meta=meta)


def _nan_baseline(tmp_path: Path) -> Path:
    path = tmp_path / "nan.pt"
    model = build_model("vgg11_bn_small", num_classes=10, in_channels=3, width=0.0625)
    save_checkpoint(path, model, input_shape=(3, 32, 32), meta={"num_classes": 10})
    raw = torch.load(path, weights_only=True)
    key = next(k for k in raw["state_dict"] if k.endswith("weight"))
    raw["state_dict"][key] = torch.full_like(raw["state_dict"][key], float("nan"))
    torch.save(raw, path)
    return path


def _tiny_images(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text("[model]\nwidth = 0.0625\n[data]\nimage_size = 4\n")
    return path


REFUSED: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "missing baseline": (lambda t: ["--baseline", str(t / "none.pt")], "does not exist"),
    "baseline that is text": (
        lambda t: ["--baseline", str(_text_file(t))],
        "is not a prunewise checkpoint",
    ),
    "baseline of other classes": (
        lambda t: ["--baseline", str(_ten_class_baseline(t))],
        "has 7 classes",
    ),
    "baseline with NaN weights": (lambda t: ["--baseline", str(_nan_baseline(t))], "holds NaN"),
    "missing dataset": (
        lambda t: ["--dataset", "cifar10", "--data-dir", str(t / "none")],
        "CIFAR-10 not found",
    ),
    "more calibration images than validation": (
        lambda _t: ["--calibration-images", "100000"],
        "more than the",
    ),
    "unknown model": (lambda _t: ["--model", "nosuch"], "unknown model 'nosuch'"),
    "model options beside a baseline": (
        lambda t: ["--baseline", str(_ten_class_baseline(t)), "--width", "0.5"],
        "model.width (--width) must be unset with --baseline (its checkpoint is the model)",
    ),
    "the default model named beside a baseline": (
        lambda t: ["--baseline", str(_ten_class_baseline(t)), "--model", "vgg13_bn_small"],
        "model.name (--model) must be unset with --baseline",
    ),
    "infinite temperature": (
        lambda _t: ["--distill", "baseline", "--temperature", "inf"],
        "(--temperature) must be a number in (0, 100], got inf",
    ),
    "seed beyond 64 bits": (lambda _t: ["--seed", str(2**64)], "must be an integer in [0, 2^63-1]"),
    "width of a torchvision model": (
        lambda _t: ["--model", "alexnet", "--width", "1"],
        "width applies to prunewise models only",
    ),
    "images too small for the model": (
        lambda t: ["--config", str(_tiny_images(t))],
        "does not fit the model",
    ),
    "unknown board": (lambda _t: ["--board", "zcu999"], "unknown board 'zcu999'"),
    "cuda without a GPU": (
        lambda _t: ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--lr", "0"],
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_run_leaves_no_folder(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, fragment = REFUSED[case]
    out = tmp_path / "run"
    given = extra(tmp_path)
    fast = [*FAST[:2], *FAST[6:]] if "--baseline" in given else FAST  # the checkpoint: the model
    argv = ["run", *fast, *given, "--out", str(out)]
    if "--no-dpu" in argv and "--board" in argv:
        argv.remove("--no-dpu")
    if "--calibration-images" in argv:
        argv.remove("--no-deploy")
    assert fragment in _refused(argv, capsys)
    assert not out.exists()


TOML_REFUSED = {
    "[train]\ndevice = 5\n": "train.device (--device) must be",
    "[dpu]\nboard = 5\n": "dpu.board (--board) must be",
    "group_experiment = 9223372036854775807\n": "group_experiment (--group-experiment) must be",
    "[train]\nlr = inf\n": "train.lr (--lr) must be a number in (0, 10], got inf",
    '[train]\nnesterov = "yes"\n': "train.nesterov (--no-nesterov) must be true or false",
    "tolerance = true\n": "tolerance (--tolerance) must be a number in [0, 100], got True",
    "[data]\nimage_size = 100000\n": "data.image_size (--image-size) must be a side or H,W",
    "[data]\nimage_size = [8, 8, 8]\n": "data.image_size (--image-size) must be a side or H,W",
    "train = 3\n": "[train] of the run config must be a table",
}


@pytest.mark.parametrize("text", sorted(TOML_REFUSED))
def test_bad_toml_values_are_one_line_and_leave_nothing(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(text)
    out = tmp_path / "run"
    err = _refused(["run", "--config", str(config), "--out", str(out)], capsys)
    assert TOML_REFUSED[text] in err
    assert not out.exists()


_BARE = '{"format": "prunewise-run/1", "model": {}, "data": {}}'  # no policy: damaged


@pytest.mark.parametrize(
    "content",
    ["[1, 2]", '{"format": "prunewise-run/9"}', '{"train": []}', "{", '"x"', "{}", _BARE],
)
def test_resume_of_a_damaged_config_is_one_line(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    err = _refused(["run", "--resume", str(folder)], capsys)
    assert "config.json" in err
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]


def _config(**train: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {"name": "vgg11_bn_small", "width": 0.0625},
            "data": SMALL_DATA,
            "train": {"epochs": 1, "progress": False, "device": "cpu", **train},
            "finetune": {"epochs": 0},
            "max_iterations": 1,
            "analysis_images": 4,
            "group_experiment": 0,
            "deploy": {"enabled": False},
            "dpu": {"enabled": False},
        }
    )


def test_a_second_process_cannot_work_in_a_held_folder(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    with folder.lock(), pytest.raises(PrunewiseError, match=r"in use by another prunewise .*pid"):
        run_pipeline(_config(), folder.root)
    assert not folder.config.exists()
    run_pipeline(_config(), folder.root, report=False)  # released: the run goes ahead
    with folder.lock(), pytest.raises(PrunewiseError, match="in use by another"):
        run_pipeline(_config(), folder.root, resume=True, report=False)


def test_a_failed_attempt_is_marked_and_resume_clears_it(tmp_path: Path, monkeypatch) -> None:
    import prunewise.pipeline.work as run_module

    def broken(*_args: object, **_kwargs: object) -> None:
        raise PrunewiseError("the disk is full")

    folder = RunFolder(tmp_path / "run")
    monkeypatch.setattr(run_module, "train", broken)
    with pytest.raises(PrunewiseError, match="the disk is full"):
        run_pipeline(_config(), folder.root, report=False)
    failure = json.loads(folder.failure.read_text())
    assert failure["error"] == "the disk is full" and failure["type"] == "PrunewiseError"
    monkeypatch.undo()
    result = run_pipeline(_config(), folder.root, resume=True, report=False)
    assert not folder.failure.exists()
    assert result.summary.iterations


@pytest.mark.parametrize("kind", ["weights", "baseline"])
def test_a_run_resumes_after_its_baseline_file_moved(
    tmp_path: Path, monkeypatch, kind: str
) -> None:
    import prunewise.pipeline.work as work_module

    model = build_model("vgg11_bn_small", num_classes=10, in_channels=3, width=0.0625)
    if kind == "weights":
        source = tmp_path / "w.pt"
        torch.save(model.state_dict(), source)
    else:
        source = save_checkpoint(
            tmp_path / "b.pt", model, input_shape=(3, 32, 32), meta={"num_classes": 10}
        )
    config = RunConfig.from_dict(
        {
            **_config().to_dict(),
            "model": {"baseline": str(source)}
            if kind == "baseline"
            else {"name": "vgg11_bn_small", "width": 0.0625, "weights": str(source)},
        }
    )

    def broken(*_args: object, **_kwargs: object) -> None:
        raise PrunewiseError("the machine went down")

    folder = RunFolder(tmp_path / "run")
    monkeypatch.setattr(work_module, "train", broken)
    with pytest.raises(PrunewiseError, match="went down"):
        run_pipeline(config, folder.root, report=False)  # the baseline is done, iteration 1 not
    assert folder.done(0) and not folder.done(1)
    monkeypatch.undo()
    source.rename(tmp_path / "moved.pt")
    result = run_pipeline(config, folder.root, resume=True, report=False)
    assert [r.iteration for r in result.summary.iterations] == [1]


def test_a_fine_tune_that_diverges_says_how_to_go_on_from_the_trained_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from prunewise.train import TrainingDiverged

    work = sys.modules["prunewise.pipeline.work"]
    real = work.train

    def diverging(*args: object, desc: str = "", **kwargs: object) -> object:
        if desc != "baseline":
            raise TrainingDiverged(f"{desc}: training diverged in epoch 1 (mean loss nan)")
        return real(*args, desc=desc, **kwargs)

    monkeypatch.setattr(work, "train", diverging)
    out = tmp_path / "run"
    argv = ["run", *FAST[:8], "--finetune-epochs", "1", *FAST[10:], "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's log lines
    assert f"prunewise run --baseline {out}/baseline/model.pt --lr LOWER" in err
    assert (out / "baseline" / "model.pt").is_file()


def test_a_new_job_refuses_a_folder_with_files_and_no_config(tmp_path: Path) -> None:
    from prunewise.pipeline.job import RUN_JOB, check_job_folder

    folder = RunFolder(tmp_path / "out")
    folder.root.mkdir()
    (folder.root / ".lock").touch()  # its own lock, hidden files: no obstacle
    check_job_folder(folder, RUN_JOB, resume=False)
    (folder.root / "baseline").mkdir()  # another run's stage, its config.json deleted
    (folder.root / "thesis.txt").touch()
    with pytest.raises(PrunewiseError, match=r"not empty \(baseline, thesis.txt\).*new or empty"):
        check_job_folder(folder, RUN_JOB, resume=False)


def test_a_job_folder_with_symbolic_links_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    from prunewise.pipeline.job import RUN_JOB, check_job_folder

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = RunFolder(tmp_path / "out")
    (folder.root / "baseline").mkdir(parents=True)
    folder.config.write_text("{}")
    (folder.root / ".lock").symlink_to(victim)
    (folder.root / "baseline" / "metrics.json").symlink_to(victim)
    with pytest.raises(PrunewiseError, match=r"symbolic links \(.lock, baseline/metrics.json\)"):
        check_job_folder(folder, RUN_JOB, resume=True)
    with pytest.raises(PrunewiseError, match="symbolic links"):
        run_pipeline(_config(), folder.root, resume=True, report=False)
    with pytest.raises(PrunewiseError), folder.lock():  # O_NOFOLLOW: the link is not opened
        pass
    assert victim.read_text() == "precious"


def test_a_resumed_run_refuses_data_other_than_it_started_on(tmp_path: Path) -> None:
    from torch.utils.data import TensorDataset

    from prunewise.data import DataBundle
    from prunewise.io import atomic_write_json
    from prunewise.pipeline.run import _check_same_data

    def bundle(val: int) -> DataBundle:
        ds = TensorDataset(torch.zeros(val, 1, 4, 4), torch.zeros(val, dtype=torch.long))
        return DataBundle(ds, ds, ds, 2, (1, 4, 4), "synthetic", ("a", "b"))

    def started(val: int, processes: int = 1) -> dict:
        return {**bundle(val).fingerprint(), "processes": processes}

    folder = RunFolder(tmp_path)
    atomic_write_json(folder.data, started(8))
    _check_same_data(folder, started(8))
    with pytest.raises(PrunewiseError, match=r"other data or processes \(images .*'val': 8.* then"):
        _check_same_data(folder, started(7))
    with pytest.raises(PrunewiseError, match=r"processes 1 then, 2 now.*per process"):
        _check_same_data(folder, started(8, processes=2))


def test_sigterm_stops_a_job_as_ctrl_c_does_and_marks_it_failed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from prunewise.pipeline import RunFolder\n"
        "from prunewise.pipeline.job import claim_folder\n"
        "with claim_folder(RunFolder(Path(sys.argv[1])), {}, resume=False):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    job = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "job")], stdout=subprocess.PIPE, text=True
    )
    assert job.stdout is not None and job.stdout.readline().strip() == "held"
    job.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert job.wait(timeout=30) != 0 and time.monotonic() - start < 30
    failure = json.loads((tmp_path / "job" / "failed.json").read_text())
    assert failure["type"] == "Stopped" and "SIGTERM" in failure["error"]
    log = (tmp_path / "job" / "run.log").read_text()
    assert "stopped: interrupted (stopped by signal SIGTERM)" in log


@pytest.mark.parametrize(("raised", "status"), [(KeyboardInterrupt(), 130), (Stopped(15), 143)])
def test_an_interrupted_command_exits_as_the_signal_would(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raised, status: int
) -> None:
    import prunewise.cli as cli

    def stopped(_args: object) -> int:
        raise raised

    real = cli.command
    monkeypatch.setattr(cli, "command", lambda name: (real(name)[0], stopped))
    assert main(["models"]) == status
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err  # nothing to resume but a job


def test_a_failed_deploy_stage_says_how_to_deploy_with_other_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import prunewise.pipeline.deploy_stage as stage

    def failing(*_args: object, **_kwargs: object) -> None:
        raise PrunewiseError("calibrate with min/max instead (--calibration minmax)")

    config = RunConfig.from_dict(
        {
            **_config().to_dict(),
            "data": {**SMALL_DATA, "synthetic_train": 160},
            "deploy": {"enabled": True, "int8": {"calibration_images": 16}},
        }
    )
    monkeypatch.setattr(stage, "deploy", failing)
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(PrunewiseError) as caught:
        run_pipeline(config, folder.root, report=False)
    message = str(caught.value)
    assert message.startswith("deploy baseline: calibrate with min/max instead")
    assert f"prunewise deploy --checkpoint {folder.file(0, 'model.pt')} --out DIR" in message
    assert folder.file(0, "model.pt").is_file() and folder.failure.is_file()
    assert "stopped: deploy baseline: calibrate" in folder.log.read_text()
    assert "stopped:" not in capsys.readouterr().err  # the console gets the error once, not twice


def test_a_resume_imports_code_its_folder_names_only_when_the_caller_names_it(
    tmp_path: Path,
) -> None:
    from prunewise.pipeline import ModelSpec
    from prunewise.pipeline.run import _check_named_code

    source = f"{tmp_path / 'net.py'}:Net"
    config = dataclasses.replace(_config(), model=ModelSpec(name=source, width=None))
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(PrunewiseError, match=r"running that code .* --resume .* --model .*net.py"):
        _check_named_code(config, folder, None)
    _check_named_code(config, folder, source)  # named again on the command line: allowed
    _check_named_code(_config(), folder, None)  # a registered model imports no user code
