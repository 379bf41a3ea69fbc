"""What a plan may prune, and what holds the rest whole (issue 14, item 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunewise.analysis import count_flops, layer_flops
from prunewise.analysis.prunability import NO_SCALE, TIED, prunability
from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph


class _Residual(nn.Module):
    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.a = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16) if norm else nn.Identity()
        self.b = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        return self.head(x + self.b(torch.relu(self.bn(self.a(x)))))


class _Cumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cumsum(self.bn(self.a(x)), 1))


def test_residual_groups_are_held_whole_unless_pruned_jointly() -> None:
    graph = build_channel_graph(_Residual(), (3, 8, 8))
    p = prunability(graph)
    # output channels: stem 8, a 16, b 8, head 4; only a's 16 are prunable by default
    assert (p.channels, p.prunable_channels) == (36, 16)
    assert p.blockers[0].reason == TIED and p.blockers[0].channels == 16
    assert p.flops == count_flops(_Residual(), (3, 8, 8))
    assert 0 < p.prunable_flops < p.flops
    assert p.warning() is None
    joint = prunability(graph, prune_tied=True)
    assert joint.prunable_channels == 32 and TIED not in {b.reason for b in joint.blockers}
    assert joint.prunable_flops > p.prunable_flops


def test_flops_share_counts_each_layer_by_the_channels_it_reads_and_writes() -> None:
    model = _Residual()
    graph = build_channel_graph(model, (3, 8, 8))
    p = prunability(graph)
    flops = layer_flops(model, (3, 8, 8))
    # a writes and b reads the prunable group; bn keeps its channels: all of theirs count
    assert p.prunable_flops == flops["a"] + flops["bn"] + flops["b"]


def test_a_network_without_norms_names_the_importance_that_would_work() -> None:
    graph = build_channel_graph(_Residual(norm=False), (3, 8, 8))
    p = prunability(graph)
    assert p.prunable_channels == 0 and {b.reason for b in p.blockers} >= {NO_SCALE, TIED}
    warning = p.warning()
    assert warning is not None and "--importance l1" in warning and "--prune-tied" in warning
    assert prunability(graph, importance="l1").prunable_channels == 16


def test_an_op_without_a_rule_is_named_with_the_way_to_register_one() -> None:
    p = prunability(build_channel_graph(_Cumsum(), (3, 8, 8)))
    assert p.prunable_channels == 0 and p.prunable_flops == 0
    assert "cumsum" in p.blockers[0].reason and p.blockers[0].channels == 8
    assert "register_function_rule" in (p.warning() or "")
    assert "held whole by" in p.summary() and "cumsum" in p.summary()
    record = p.record()
    assert record["blockers"][0]["channels"] == 8 and record["warning"] == p.warning()


def test_unknown_importance_is_refused() -> None:
    with pytest.raises(PrunewiseError, match="unknown importance"):
        prunability(build_channel_graph(_Cumsum(), (3, 8, 8)), importance="taylor")


def test_subtraction_ties_like_a_residual_and_a_gate_does_not() -> None:
    class Gate(nn.Module):
        def __init__(self, subtract: bool) -> None:
            super().__init__()
            self.subtract = subtract
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), self.b(x)
            return self.head(a - b if self.subtract else a * torch.sigmoid(b))

    assert build_channel_graph(Gate(True), (3, 4, 4)).group("a").tied
    assert not build_channel_graph(Gate(False), (3, 4, 4)).group("a").tied


def test_a_share_reads_100_percent_only_when_it_is_all() -> None:
    from prunewise.analysis.prunability import percent

    assert [percent(s) for s in (1.0, 1104 / 1107, 0.29, 0.0, 0.004)] == [
        "100%", "99%", "29%", "0%", "0%",
    ]  # fmt: skip
