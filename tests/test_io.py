"""Checkpoints reload without the model's class; plans and JSON are written atomically."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.io import atomic_write_json, load_checkpoint, read_json, save_checkpoint
from prunewise.prune import PruningPlan, apply_plan, uniform_plan


def test_pruned_checkpoint_round_trip(tmp_path: Path, randomize_bn) -> None:
    model = randomize_bn(torchvision.models.get_model("mobilenet_v2", weights=None))
    graph = build_channel_graph(model, (3, 32, 32))
    plan = uniform_plan(graph, 0.5)
    pruned = apply_plan(graph, plan).eval()
    path = save_checkpoint(tmp_path / "p.pt", pruned, input_shape=(3, 32, 32), meta={"k": 1})
    ck = load_checkpoint(path)
    assert ck.meta["k"] == 1 and ck.input_shape == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ck.model.eval()(x), pruned(x))
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json") == plan


def test_checkpoint_loads_in_a_fresh_process_without_the_model_class(tmp_path: Path) -> None:
    class Private(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.fc = torch.nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))

    model = Private().eval()
    save_checkpoint(tmp_path / "m.pt", model, input_shape=(1, 8, 8))
    x = torch.randn(1, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).detach(), tmp_path / "y.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        raw = torch.load({str(tmp_path / "m.pt")!r}, weights_only=True)
        assert raw["format"].startswith("prunewise-checkpoint")
        from prunewise.io import load_checkpoint
        m = load_checkpoint({str(tmp_path / "m.pt")!r}).model.eval()
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        y = torch.load({str(tmp_path / "y.pt")!r}, weights_only=True)
        assert torch.equal(m(x), y)
        assert not any(k.startswith("prunewise.models") or "test_io" in k for k in sys.modules)
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint at all", None, {"format": "other"}, {"weights": torch.zeros(2)}],
)
def test_foreign_files_are_not_checkpoints(tmp_path: Path, content) -> None:
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(PrunewiseError, match=r"not a prunewise checkpoint|does not exist"):
        load_checkpoint(path)


def test_atomic_json_leaves_no_temporary_files(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})
    assert read_json(tmp_path / "a" / "b.json") == {"x": [1, 2]}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PrunewiseError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
