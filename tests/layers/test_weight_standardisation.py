"""Convolutions that compute their weight from a stored one, row by row (weight
standardisation: BiT's StdConv2d, NFNet's ScaledStdConv2d, a user's own WSConv2d)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunewise.graph import build_channel_graph
from prunewise.prune import apply_plan, uniform_plan
from prunewise.prune.surgery import zeroed_copy


class WSConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = self.gain * (w - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class TimmStyle(nn.Conv2d):
    """timm's StdConv2d: batch_norm over a (1, out_channels, -1) view of the weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6
        ).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class AcrossRows(nn.Conv2d):
    """Scales by the largest weight of the whole tensor: rows depend on each other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight / self.weight.abs().amax(dim=0, keepdim=True), self.bias)


class Net(nn.Module):
    def __init__(self, conv: type[nn.Conv2d]) -> None:
        super().__init__()
        self.c1 = conv(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        if conv is WSConv2d:
            self.c1.gain = nn.Parameter(torch.rand(8, 1, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c2(self.c1(x).relu()).relu()
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("conv", [WSConv2d, TimmStyle])
def test_output_channels_of_a_standardised_conv_prune_exactly(conv: type[nn.Conv2d]) -> None:
    torch.manual_seed(0)
    model = Net(conv).double().eval()
    graph = build_channel_graph(model, (3, 8, 8))
    group = next(g for g in graph.groups if g.prunable and g.size == 8)
    assert group.mixed is None  # its consumer is a plain convolution
    plan = uniform_plan(graph, 0.5, importance="l2")
    pruned = apply_plan(graph, plan).eval()
    assert pruned.c1.weight.shape[0] == 4
    if conv is WSConv2d:
        assert pruned.c1.gain.shape == (4, 1, 1, 1)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed_copy(graph, plan).eval()(x))


def test_input_channels_of_a_standardised_conv_are_mixed() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), WSConv2d(8, 4, 3))
    model[2].gain = nn.Parameter(torch.ones(4, 1, 1, 1))
    graph = build_channel_graph(model, (3, 8, 8))
    group = next(g for g in graph.groups if g.size == 8)
    assert group.prunable and "standardises its weight" in (group.mixed or "")


def test_a_weight_computed_across_rows_is_not_followed() -> None:
    graph = build_channel_graph(Net(AcrossRows), (3, 8, 8))
    group = next(g for g in graph.groups if g.size == 8)
    assert not group.prunable and "computes its weight" in (group.blocked or "")
