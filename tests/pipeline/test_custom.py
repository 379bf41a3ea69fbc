"""prune_iteratively: paper A's loop with the user's own fine-tune and metric."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunewise.cli import main
from prunewise.errors import PrunewiseError
from prunewise.pipeline import FinetuneConfig, LoopConfig, prune_iteratively
from prunewise.report import build_report

JOB = Path(__file__).with_name("custom_job.py")


def _job(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(JOB), str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_killed_mid_finetune_then_resumed_matches_uninterrupted(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _job(whole)
    assert done.returncode == 0, done.stderr
    # 3 fine-tune epochs per iteration: epoch 5 is iteration 2's second, killed mid-epoch
    cut = _job(killed, "--kill-at", "5")
    assert cut.returncode == -signal.SIGKILL, cut.stderr
    assert (killed / "iter_01" / "model.pt").is_file()
    assert not (killed / "iter_02" / "model.pt").exists()
    assert (killed / "iter_02" / "train_state.pt").is_file()  # epoch 1 of iteration 2 saved
    again = _job(killed, "--resume")
    assert again.returncode == 0, again.stderr
    assert "iter 2 fine-tune: resuming after epoch 1" in again.stderr
    assert "baseline: finished earlier" in again.stderr
    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert a["iterations"] == b["iterations"]  # same counts and the same scores, exactly
    assert a["channels"] == b["channels"]
    assert len(a["iterations"]) == 3 and a["metric"] == "pixel accuracy"
    epochs = json.loads((killed / "iter_02" / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    report = (killed / "report.md").read_text()
    assert "val pixel accuracy" in report and "your own fine-tune" in report


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.1, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


def _config(**changes: object) -> LoopConfig:
    base = {
        "metric": "mAP",
        "tolerance": 1e6,
        "max_iterations": 2,
        "progress": False,
        "finetune": FinetuneConfig(epochs=1),
    }
    return LoopConfig(**{**base, **changes})


def test_a_finetune_without_session_resumes_by_iteration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model, x = _Net(), torch.rand(8, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls: list[tuple[int, bool]] = []

    def finetune(net: nn.Module, epochs: int, teacher: nn.Module | None) -> None:
        calls.append((epochs, net.training))
        if len(calls) == 2:
            raise RuntimeError("out of memory")

    def evaluate(net: nn.Module) -> float:
        assert not net.training
        return float(sum(p.numel() for p in net.parameters()))  # bigger is "better"

    out = tmp_path / "job"
    with pytest.raises(RuntimeError, match="out of memory"):
        prune_iteratively(model, x, finetune=finetune, evaluate=evaluate, out=out, config=_config())
    assert (out / "failed.json").is_file() and (out / "iter_01" / "model.pt").is_file()
    report = (out / "report.md").read_text() if build_report(out) else ""
    assert f"`prune_iteratively(..., out='{out}', resume=True)` retries" in report
    assert "| sparsity images | 8 |" in report  # as measured: 8 given, analysis_images 100
    assert main(["run", "--resume", str(out)]) == 2
    assert "prune_iteratively job (Python)" in capsys.readouterr().err
    with pytest.raises(PrunewiseError, match="already holds a run; continue it with resume=True"):
        prune_iteratively(model, x, finetune=finetune, evaluate=evaluate, out=out, config=_config())
    with pytest.raises(PrunewiseError, match="other settings"):
        prune_iteratively(
            model,
            x,
            finetune=finetune,
            evaluate=evaluate,
            out=out,
            config=_config(metric="x"),
            resume=True,
        )
    again = _config(progress=True)  # the progress bar may change on resume, nothing else
    result = prune_iteratively(
        model, x, finetune=finetune, evaluate=evaluate, out=out, config=again, resume=True
    )
    assert calls == [(1, True), (1, True), (1, True)]  # iteration 1 not fine-tuned again
    assert not (out / "failed.json").exists()
    assert [r.iteration for r in result.summary.iterations] == [1, 2]
    assert result.summary.metric == "mAP"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched


def test_the_teacher_is_handed_in_eval_mode_and_left_as_it_was(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _Net(), torch.rand(8, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[tuple[bool, int]] = []

    def finetune(net: nn.Module, epochs: int, teacher: nn.Module | None, **kw: object) -> None:
        assert "session" not in kw  # **kw alone does not promise to call session.epoch_done
        assert teacher is not None and teacher is not net
        seen.append((teacher.training, sum(p.numel() for p in teacher.parameters())))
        with torch.no_grad():
            teacher(torch.rand(16, 3, 8, 8) * 5)  # would move batch-norm statistics in train mode

    config = _config(finetune=FinetuneConfig(epochs=1, teacher="baseline"))
    model.train()
    prune_iteratively(
        model, x, finetune=finetune, evaluate=lambda n: 1.0, out=tmp_path / "j", config=config
    )
    assert [training for training, _ in seen] == [False, False]
    assert seen[0][1] == seen[1][1] == sum(p.numel() for p in model.parameters())  # the baseline
    assert model.training  # its mode restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_tolerance_is_in_the_users_metric(tmp_path: Path) -> None:
    torch.manual_seed(0)
    scores = iter([50.0, 49.5, 47.0])

    def evaluate(net: nn.Module) -> torch.Tensor:
        return torch.tensor(next(scores))  # a 0-d tensor is a number too

    result = prune_iteratively(
        _Net(),
        torch.rand(4, 3, 8, 8),
        finetune=lambda net, epochs, teacher: None,
        evaluate=evaluate,
        out=tmp_path / "job",
        config=_config(tolerance=2.0, max_iterations=5, finetune=FinetuneConfig(epochs=0)),
    )
    # scored: baseline 50; iteration 1 right after pruning 49.5, then after its fine-tune 47
    rows = result.summary.iterations
    assert result.summary.stopped == "tolerance" and result.summary.kept == 0
    assert [(r.val_score_pruned, r.scores.val_score, r.scores.test_score) for r in rows] == [
        (49.5, 47.0, None)
    ]
    assert rows[0].within_tolerance is False  # 47 < 50 - 2


@pytest.mark.parametrize(
    ("value", "words"),
    [("high", "one number"), (float("nan"), "finite"), (None, "one number")],
)
def test_evaluate_must_return_a_number(tmp_path: Path, value: object, words: str) -> None:
    with pytest.raises(PrunewiseError, match=words):
        prune_iteratively(
            _Net(),
            torch.rand(4, 3, 8, 8),
            finetune=lambda net, epochs, teacher: None,
            evaluate=lambda net: value,
            out=tmp_path / "job",
            config=_config(),
        )


def test_numbers_of_numpy_and_torch_are_taken_and_epoch_metrics_must_be_numbers(
    tmp_path: Path,
) -> None:
    def finetune(net: nn.Module, epochs: int, teacher: nn.Module | None, *, session) -> None:
        session.epoch_done(loss=torch.tensor(0.25), acc=np.float32(0.5))

    kw = {"evaluate": lambda net: np.array(50.0), "config": _config(max_iterations=1)}
    prune_iteratively(_Net(), torch.rand(4, 3, 8, 8), finetune=finetune, out=tmp_path / "a", **kw)
    metrics = json.loads((tmp_path / "a" / "iter_01" / "metrics.json").read_text())
    assert metrics["epochs"] == [{"epoch": 1, "loss": 0.25, "acc": 0.5}]

    def diverged(net: nn.Module, epochs: int, teacher: nn.Module | None, *, session) -> None:
        session.epoch_done(loss=float("nan"))

    with pytest.raises(
        PrunewiseError, match=r"session.epoch_done's loss is nan; it must be finite"
    ):
        prune_iteratively(
            _Net(), torch.rand(4, 3, 8, 8), finetune=diverged, out=tmp_path / "b", **kw
        )


def test_bad_calls_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "job"

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return self.conv(-x)

    ok = {"finetune": lambda n, e, t: None, "evaluate": lambda n: 1.0, "out": out}
    with pytest.raises(PrunewiseError, match="batch"):
        prune_iteratively(_Net(), torch.rand(3), **ok)
    with pytest.raises(PrunewiseError, match=r"one image of shape \(3, 8, 8\).*unsqueeze\(0\)"):
        prune_iteratively(_Net(), torch.rand(3, 8, 8), **ok)
    with pytest.raises(PrunewiseError, match="callable"):
        prune_iteratively(_Net(), torch.rand(2, 3, 8, 8), **{**ok, "evaluate": 1.0})
    with pytest.raises(PrunewiseError):
        prune_iteratively(Untraceable(), torch.rand(2, 3, 8, 8), **ok)
    assert not out.exists()


def test_a_session_state_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Opaque:
        pass

    def finetune(net: nn.Module, epochs: int, teacher: nn.Module | None, *, session) -> None:
        session.epoch_done({"thing": Opaque()})

    with pytest.raises(PrunewiseError, match="weights_only"):
        prune_iteratively(
            _Net(),
            torch.rand(4, 3, 8, 8),
            finetune=finetune,
            evaluate=lambda net: 1.0,
            out=tmp_path / "job",
            config=_config(),
        )


class _Detector(nn.Module):
    """Takes a list of images, as torchvision's detectors do (not traceable whole); its
    backbone is a plain convolution stack."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Conv2d(8, 4, 1)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.1, 1.0)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.head(self.backbone(image[None])).mean((2, 3))[0] for image in images]


def test_a_scope_prunes_the_part_of_a_model_that_cannot_be_traced_whole(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _Detector(), torch.rand(6, 3, 8, 8)
    seen: list[int] = []

    def finetune(net: nn.Module, epochs: int, teacher: nn.Module | None) -> None:
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        loss = torch.stack(net(list(x))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(
            next(m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)).out_channels
        )

    def evaluate(net: nn.Module) -> float:
        with torch.no_grad():
            return float(len(net(list(x[:2]))))  # the whole model still runs on images

    ok = {"finetune": finetune, "evaluate": evaluate, "out": tmp_path / "job"}
    with pytest.raises(PrunewiseError, match="scope"):
        prune_iteratively(model, x, **ok, config=_config())
    result = prune_iteratively(model, x, **ok, config=_config(scope="backbone"))
    rows = result.summary.iterations
    assert len(rows) == 2 and rows[-1].scores.flops < result.summary.baseline.flops
    assert seen == sorted(seen, reverse=True) and seen[-1] < 8  # the backbone shrinks
    channels = result.summary.channels
    assert channels["head"] == (4, 4, 4) and channels["backbone.3"][-1] == 8  # boundary fixed
    assert (tmp_path / "job" / "iter_02" / "outer.pt").is_file()
    calls = len(seen)
    again = prune_iteratively(model, x, **ok, config=None, resume=True)
    assert again.summary == result.summary and len(seen) == calls  # finished: nothing redone
