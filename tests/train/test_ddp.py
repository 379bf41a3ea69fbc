"""DistributedDataParallel under torchrun: 2 CPU processes with gloo on synthetic data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunewise

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(prunewise.__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Run the worker on 2 ranks once; the results of rank 0 and rank 1."""
    out = tmp_path_factory.mktemp("ddp")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        str(WORKER),
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_context(ranks: list[dict]) -> None:
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    assert all(r["idempotent"] for r in ranks)
    assert all(r["model_type"] == "Sequential" for r in ranks)  # unwrapped, trained in place


def test_each_rank_trains_on_its_own_shard(ranks: list[dict]) -> None:
    a, b = ranks[0]["shard"], ranks[1]["shard"]
    assert len(a) == len(b) == 128
    assert sorted(a + b) == list(range(256))


def test_ranks_end_identical_and_learned(ranks: list[dict]) -> None:
    w0, w1 = ranks[0]["weights"], ranks[1]["weights"]
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "weights or BN statistics differ"
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert h0 == h1  # reduced metrics: every rank reports the same numbers
    assert [m["epoch"] for m in h0] == list(range(1, 9))
    assert h0[-1]["loss"] < 0.5 * h0[0]["loss"]
    assert h0[-1]["val_acc"] > 60


def test_rank_zero_only_callback_and_progress(ranks: list[dict]) -> None:
    assert ranks[0]["calls"] == list(range(1, 9))
    assert ranks[1]["calls"] == []
    assert "batch" in ranks[0]["progress"] and "loss=" in ranks[0]["progress"]
    assert ranks[1]["progress"] == ""


def test_checkpoint_written_before_other_ranks_go_on(ranks: list[dict]) -> None:
    for r in ranks:
        assert r["saved_epochs"] == 8
        saved, final = r["saved_weights"], r["weights"]
        assert all(torch.equal(saved[k], final[k]) for k in final)
