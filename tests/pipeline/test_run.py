"""`prunewise run` end to end on synthetic data: the folder, the stop rule, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunewise.io import load_checkpoint
from prunewise.pipeline import RunConfig, RunFolder, run_pipeline

TOML = """
max_iterations = 2
tolerance = 100.0
batch_size = 64
analysis_images = 16
group_experiment = 4
[model]
name = "vgg11_bn_small"
width = 0.0625
[data]
name = "synthetic"
synthetic_train = {train}
synthetic_test = 64
synthetic_classes = 4
[train]
epochs = 1
progress = false
device = "cpu"
[finetune]
epochs = {ft_epochs}
teacher = "baseline"
[deploy.int8]
calibration_images = 16
[deploy.latency]
batch_sizes = [1, 4]
threads = [1]
warmup = 1
repeats = 3
"""


def _config_file(tmp_path: Path, train: int = 320, ft_epochs: int = 1) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(TOML.format(train=train, ft_epochs=ft_epochs))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "prunewise", "run", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_run_writes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        _cli("--config", str(_config_file(tmp_path)), "--out", str(out)),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "report:" in done.stdout
    folder = RunFolder(out)
    summary = json.loads(folder.summary.read_text())
    assert summary["stopped"] == "max_iterations"
    assert [r["iteration"] for r in summary["iterations"]] == [1, 2]
    assert summary["kept"] == 2
    assert summary["distill"] == "baseline"
    flops = [summary["baseline"]["flops"]] + [r["flops"] for r in summary["iterations"]]
    assert flops[0] > flops[1] > flops[2]
    for name in ("config.json", "run.log", "group_experiment.json", "report.html"):
        assert (out / name).is_file(), name
    for stage in ("baseline", "iter_01", "iter_02"):
        for name in ("model.pt", "metrics.json", "analysis.json"):
            assert (out / stage / name).is_file(), (stage, name)
        assert not (out / stage / "train_state.pt").exists()
        raw = torch.load(out / stage / "model.pt", weights_only=True)
        assert raw["format"] == "prunewise-checkpoint/1"
    assert (out / "iter_01" / "plan.json").is_file()
    ck = load_checkpoint(out / "iter_02" / "model.pt")
    assert sum(p.numel() for p in ck.model.parameters()) == summary["iterations"][1]["params"]
    channels = summary["channels"]
    assert all(len(v) == 3 for v in channels.values())
    assert any(v[2] < v[0] for v in channels.values())
    ge = json.loads(folder.group_experiment.read_text())
    assert ge["G"] == 4 and len(ge["accuracy"]) == 4
    log = (out / "run.log").read_text()
    assert "iter 2:" in log
    for stage in ("baseline", "iter_02"):  # the deploy stage: baseline and the kept model
        rec = json.loads((out / "deploy" / stage / "deploy.json").read_text())
        assert rec["parity"]["float_ok"] and rec["parity"]["int8_ok"]
        assert rec["bytes"]["int8"] < rec["bytes"]["float"]
        assert [(r["threads"], r["batch"]) for r in rec["latency"]["int8"]] == [(1, 1), (1, 4)]
        for name in ("model.onnx", "model.int8.onnx", "quant.json"):
            assert (out / "deploy" / stage / name).is_file()
    assert not (out / "deploy" / "iter_01").exists()
    html = (out / "report.html").read_text()
    assert "Deployment: INT8 and ONNX Runtime" in html and "iter 2 (kept)" in html
    prunable = json.loads((out / "baseline" / "analysis.json").read_text())["prunability"]
    assert 0 < prunable["prunable_channels"] < prunable["channels"]
    assert "What the policy may prune" in html and "baseline: prunable:" in log
    dpu = {s: json.loads((out / "dpu" / f"{s}.json").read_text()) for s in ("baseline", "iter_02")}
    assert dpu["baseline"]["board"] == "zcu102" and set(dpu["baseline"]["fps"]) == {"1", "2"}
    assert dpu["iter_02"]["total"]["gop"] < dpu["baseline"]["total"]["gop"]
    assert "DPU model: per-subgraph workload, time and fps" in html
    again = subprocess.run(
        _cli("--config", str(_config_file(tmp_path)), "--out", str(out)),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert again.returncode == 2
    assert "already holds a run" in again.stderr and "--resume" in again.stderr


def test_tolerance_stops_and_keeps_previous(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(
        {
            "model": {"name": "vgg11_bn_small", "width": 0.0625},
            "data": {"name": "synthetic", "synthetic_train": 320, "synthetic_classes": 4},
            "train": {"epochs": 1, "progress": False, "device": "cpu"},
            "finetune": {"epochs": 0},
            "policy": {"alpha": 1.0, "beta": 1.0},
            "tolerance": -0.0,
            "max_iterations": 3,
            "group_experiment": 0,
            "analysis_images": 8,
            "deploy": {"enabled": False},
        }
    )
    result = run_pipeline(cfg, tmp_path / "run", report=False)
    rows = result.summary.iterations
    assert result.summary.stopped in ("tolerance", "max_iterations", "nothing_to_prune")
    if result.summary.stopped == "tolerance":
        assert not rows[-1].within_tolerance
        assert result.summary.kept == len(rows) - 1


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {path} appeared")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_mid_finetune_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    toml = _config_file(tmp_path, train=640, ft_epochs=3)
    straight = tmp_path / "straight"
    subprocess.run(
        _cli("--config", str(toml), "--out", str(straight), "--no-report"),
        check=True,
        capture_output=True,
        env=_env(),
        timeout=600,
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli("--config", str(toml), "--out", str(killed), "--no-report"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    state = killed / "iter_01" / "train_state.pt"
    _wait_for(state, proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "iter_01" / "model.pt").exists(), "killed too late: fine-tune finished"
    baseline_bytes = (killed / "baseline" / "model.pt").read_bytes()
    saved = torch.load(state, weights_only=True)
    done_before = int(saved["epochs_done"])
    assert 1 <= done_before < 3
    resumed = subprocess.run(
        _cli("--resume", str(killed), "--no-report"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / "baseline" / "model.pt").read_bytes() == baseline_bytes
    log = (killed / "run.log").read_text()
    assert "baseline: finished earlier" in log
    assert f"resuming after epoch {done_before}/3" in log
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert len(a["iterations"]) == len(b["iterations"])
    assert a["channels"] == b["channels"]
    for ra, rb in zip(a["iterations"], b["iterations"], strict=True):
        assert ra["params"] == rb["params"] and ra["flops"] == rb["flops"]
        assert abs(ra["val_acc"] - rb["val_acc"]) <= 1.0
    m = json.loads((killed / "iter_01" / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]


def test_resume_takes_progress_from_the_command_line(tmp_path: Path, monkeypatch) -> None:
    import prunewise.pipeline.run as run_module

    (tmp_path / "config.json").write_text(json.dumps(RunConfig().to_dict()))
    seen = []
    monkeypatch.setattr(run_module, "_run", lambda config, *a, **k: seen.append(config))
    run_pipeline(RunConfig(), tmp_path, resume=True, progress=False)
    run_pipeline(RunConfig(), tmp_path, resume=True)
    assert [c.train.progress for c in seen] == [False, True]
