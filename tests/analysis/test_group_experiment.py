"""Paper A fig. 20: remove the g-th |gamma| part of every prunable group, evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunewise.analysis import group_experiment
from prunewise.analysis.group_experiment import gamma_parts
from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.prune import GroupDecision, PruningPlan, apply_plan
from prunewise.train import evaluate

GAMMA = [0.001, 0.9, 0.002, 1.2, 0.003, 1.0, 0.004, 1.1]  # planted: 4 tiny, 4 large


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.a = nn.Conv2d(4, 6, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn0(self.stem(x)))
        z = self.bn2(self.b(torch.relu(self.bn1(self.a(y)))))
        return self.fc(torch.relu(y + z).mean(dim=(2, 3)))


def _planted() -> nn.Module:
    torch.manual_seed(1)
    m = _Net().eval()
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor(GAMMA))
        m.bn.bias.zero_()
        m.fc.bias.zero_()
    return m


def _loader(model: nn.Module, n: int = 256, shape: tuple[int, ...] = (1, 8, 8)) -> DataLoader:
    """Inputs labelled by the model itself: baseline accuracy is 100 %."""
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return DataLoader(TensorDataset(x, y), batch_size=64)


def test_top_gamma_part_hurts_more_than_bottom() -> None:
    model = _planted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = group_experiment(model, _loader(model), groups=2, progress=False)
    assert rec["G"] == 2 and len(rec["accuracy"]) == 2
    assert rec["baseline_acc"] == 100.0
    assert rec["images"] == 256
    assert rec["pruned_groups"] == ["conv"]
    low, high = rec["accuracy"]
    assert low > 95.0
    assert high < low - 20.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_matches_physical_removal() -> None:
    model = _planted()
    loader = _loader(model)
    rec = group_experiment(model, loader, groups=4, input_shape=(1, 8, 8), progress=False)
    graph = build_channel_graph(model, (1, 8, 8))
    top = gamma_parts(np.array(GAMMA), 4)[3]
    kept = tuple(sorted(set(range(8)) - {int(i) for i in top}))
    plan = PruningPlan((GroupDecision("conv", 8, kept),), (1, 8, 8))
    assert rec["accuracy"][3] == pytest.approx(evaluate(apply_plan(graph, plan), loader))


def test_more_parts_than_channels_and_single_part() -> None:
    model = _planted()
    loader = _loader(model, n=64)
    rec = group_experiment(model, loader, groups=12, progress=False)
    assert len(rec["accuracy"]) == 12
    empty = [g for g in range(12) if g % 3 == 0]  # parts 1, 4, 7, 10 hold no channel of 8
    assert [rec["accuracy"][g] for g in empty] == [rec["baseline_acc"]] * 4
    whole = group_experiment(model, loader, groups=1, progress=False)
    assert whole["accuracy"] == [whole["baseline_acc"]]  # a group never loses every channel


def test_gamma_parts_order_and_sizes() -> None:
    parts = gamma_parts(np.array(GAMMA), 3)
    assert [len(p) for p in parts] == [2, 3, 3]
    assert parts[0].tolist() == [0, 2]
    assert np.concatenate(parts).tolist() == [0, 2, 4, 6, 1, 5, 7, 3]
    spread = gamma_parts(np.array(GAMMA), 12)  # fewer channels than parts: empties spread out
    assert [len(p) for p in spread] == [0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1]


def test_tied_groups_stay_whole_by_default() -> None:
    model = _Residual().eval()
    loader = _loader(model, n=32, shape=(1, 4, 4))
    assert group_experiment(model, loader, groups=2, progress=False)["pruned_groups"] == ["a"]
    tied = group_experiment(model, loader, groups=2, progress=False, prune_tied=True)
    assert tied["pruned_groups"] == ["stem", "a"]  # in graph order


@pytest.mark.parametrize("groups", [0, -3, 2.5, True, "50"])
def test_rejects_bad_group_count(groups: object) -> None:
    model = _planted()
    with pytest.raises(PrunewiseError, match="G must be an integer >= 1"):
        group_experiment(model, _loader(model, n=8), groups=groups, progress=False)  # type: ignore[arg-type]
    with pytest.raises(PrunewiseError, match="G must be an integer >= 1"):
        gamma_parts(np.array(GAMMA), groups)  # type: ignore[arg-type]


def test_rejects_model_without_batchnorm_and_empty_data() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    x = torch.randn(4, 1, 8, 8)
    loader = DataLoader(TensorDataset(x, torch.zeros(4, dtype=torch.long)), batch_size=2)
    with pytest.raises(PrunewiseError, match="no"):
        group_experiment(model, loader, progress=False)
    empty = DataLoader(TensorDataset(x[:0], torch.zeros(0, dtype=torch.long)), batch_size=2)
    with pytest.raises(PrunewiseError, match="empty"):
        group_experiment(_planted(), empty, progress=False)
