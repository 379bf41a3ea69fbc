"""Input sparsity (eq. 1), its CV (eq. 2), and per-group slices of concatenations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunewise.analysis import analyze, group_gamma
from prunewise.graph import build_channel_graph


class _Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(1, 2, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(2)
        self.c = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ya = torch.relu(self.bn_a(self.a(x)))
        yb = torch.relu(self.bn_b(self.b(x)))
        return self.c(torch.cat([ya, yb], dim=1))


def _model() -> nn.Module:
    m = _Cat().eval()
    with torch.no_grad():
        m.a.weight.fill_(1.0)
        m.b.weight.fill_(1.0)
        m.bn_a.bias.copy_(torch.tensor([0.0, 0.0, -100.0, -100.0]))  # 2 of 4 channels dead
        m.bn_b.bias.copy_(torch.tensor([-100.0, -100.0]))  # both dead
        m.bn_a.weight.copy_(torch.tensor([0.1, 0.4, 0.3, -0.2]))
    return m


def test_sparsity_per_group_and_per_layer() -> None:
    images = torch.rand(5, 1, 4, 4) + 0.1  # strictly positive inputs
    result = analyze(_model(), images)
    assert result.group("a").sparsity_mean == pytest.approx(0.5)
    assert result.group("b").sparsity_mean == pytest.approx(1.0)
    (layer,) = [ls for ls in result.layers if ls.module == "c"]
    assert layer.mean == pytest.approx(4 / 6)
    assert layer.std == pytest.approx(0.0) and layer.cv == pytest.approx(0.0)
    assert result.images == 5


def test_cv_is_std_over_mean_across_images() -> None:
    m = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1)
    )
    m.eval()
    with torch.no_grad():
        m[0].weight.fill_(1.0)
    images = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, -1.0, 1.0, -1.0)])
    images[0, 0, 0, 0] = -1.0  # image 0: one of 4 pixels negative -> 1/4 zero
    result = analyze(m, images)
    s = result.group("0").sparsity
    assert np.allclose(s, [0.25, 1.0, 0.0, 1.0])
    assert result.group("0").sparsity_cv == pytest.approx(np.std(s) / np.mean(s))


def test_gamma_is_absolute_and_summed_over_norms() -> None:
    g = build_channel_graph(_model(), (1, 4, 4))
    assert np.allclose(group_gamma(g, "a"), [0.1, 0.4, 0.3, 0.2])
