"""Importance is a named choice: BatchNorm |gamma| (paper A) or the producers' weight norms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from prunewise.analysis import analyze, group_gamma, group_importance
from prunewise.cli import main
from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.prune import RefinedConfig, apply_plan, decide, uniform_plan


def _plain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    ).eval()  # fmt: skip


def test_weight_norms_sum_over_each_units_rows() -> None:
    model = _plain()
    graph = build_channel_graph(model, (3, 8, 8))
    rows = model[0].weight.detach().reshape(8, -1).double()
    np.testing.assert_allclose(group_importance(graph, "0", "l1"), rows.abs().sum(1).numpy())
    np.testing.assert_allclose(group_importance(graph, "0", "l2"), rows.norm(dim=1).numpy())
    assert group_importance(graph, "0", "bn-gamma") is None
    with pytest.raises(PrunewiseError, match="unknown importance 'l3'"):
        group_importance(graph, "0", "l3")


def test_tied_channels_add_up() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    graph = build_channel_graph(model, (3, 32, 32))
    stem = graph.group("conv1")  # tied by the residual additions of layer1
    gamma = group_gamma(graph, "conv1")
    norms = [model.bn1, model.layer1[0].bn2, model.layer1[1].bn2]
    np.testing.assert_allclose(gamma, sum(m.weight.detach().abs().double().numpy() for m in norms))
    assert stem.size == 64


def test_a_network_without_batchnorm_prunes_by_weights_and_refuses_gamma() -> None:
    graph = build_channel_graph(_plain(), (3, 8, 8))
    with pytest.raises(PrunewiseError, match=r"no BatchNorm .*--importance l1"):
        uniform_plan(graph, 0.5)
    plan = uniform_plan(graph, 0.5, importance="l2")
    assert plan.policy["importance"] == "l2"
    assert sum(d.removed for d in plan.decisions) == 4 + 3
    kept = plan.kept()["0"]
    rows = _plain()[0].weight.detach().reshape(8, -1).norm(dim=1)
    assert set(kept) == set(torch.topk(rows, 4).indices.tolist())
    assert apply_plan(graph, plan)(torch.zeros(1, 3, 8, 8)).shape == (1, 4)


def test_the_refined_policy_ranks_by_the_configured_importance() -> None:
    graph = build_channel_graph(_plain(), (3, 8, 8))
    result = analyze(graph, torch.rand(4, 3, 8, 8))
    with pytest.raises(PrunewiseError, match="--importance l1"):
        decide(result, RefinedConfig())
    plan = decide(result, RefinedConfig(importance="l1", alpha=1, beta=1))
    assert plan.policy["importance"] == "l1"
    assert any(d.removed for d in plan.decisions)


def test_prune_command_takes_an_importance(tmp_path: Path, capsys) -> None:
    argv = ["prune", "--model", "squeezenet1_1", "--dataset", "synthetic", "--images", "4"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "--importance l1" in capsys.readouterr().err
    assert main([*argv, "--importance", "l1", "--scheme", "2", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "pruned.pt").is_file()


def test_the_table_shows_units_of_several_channels_and_gamma_per_channel() -> None:
    from prunewise.analysis.importance import gamma_channels_per_unit
    from prunewise.graph import build_channel_graph
    from prunewise.report.tables import analysis_records, group_rows

    model = nn.Sequential(
        nn.Conv2d(3, 12, 3), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 12, 3, groups=3), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 2),
    ).eval()  # fmt: skip
    nn.init.constant_(model[1].weight, 2.0)  # the grouped conv reads its channels in 4 x 3
    graph = build_channel_graph(model, (3, 8, 8))
    grouped = next(g.id for g in graph.groups if graph.group(g.id).size == 4)
    assert gamma_channels_per_unit(graph, grouped).tolist() == [3, 3, 3, 3]
    assert group_gamma(graph, grouped).tolist() == [6.0] * 4  # the sum it ranks by
    record = analysis_records(analyze(graph, torch.rand(4, 3, 8, 8)))
    row = next(r for r in group_rows(record)[1] if r[0] == grouped)
    assert row[1] == "4 x 3" and row[5] == row[6] == row[7] == 2.0  # |gamma| per channel
