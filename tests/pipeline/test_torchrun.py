"""`prunewise run` under torchrun: 2 CPU processes with gloo on synthetic data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from prunewise.io import load_checkpoint

TOML = """
max_iterations = 1
tolerance = 100.0
batch_size = 32
analysis_images = 8
group_experiment = 2
[model]
name = "vgg11_bn_small"
width = 0.0625
[data]
name = "synthetic"
synthetic_train = 256
synthetic_test = 64
synthetic_classes = 4
[train]
epochs = 1
progress = false
device = "cpu"
[finetune]
epochs = 1
[deploy.int8]
calibration_images = 16
[deploy.latency]
batch_sizes = [1]
threads = [1]
warmup = 1
repeats = 3
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_gloo(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={_free_port()}",
        "-m",
        "prunewise",
        "run",
        "--config",
        str(cfg),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report:") == 1  # rank 0 alone prints and writes
    summary = json.loads((out / "summary.json").read_text())
    assert [r["iteration"] for r in summary["iterations"]] == [1]
    assert summary["iterations"][0]["flops"] < summary["baseline"]["flops"]
    ck = load_checkpoint(out / "iter_01" / "model.pt")
    assert sum(p.numel() for p in ck.model.parameters()) == summary["iterations"][0]["params"]
    assert (out / "report.html").is_file()
    for stage in ("baseline", "iter_01"):  # rank 0 deployed while rank 1 waited
        assert (out / "deploy" / stage / "model.int8.onnx").is_file()
    temporary = [p for p in out.rglob(".*") if p.is_file() and p.name != ".lock"]
    assert not temporary  # no temporary files left (.lock is the folder's lock file)
