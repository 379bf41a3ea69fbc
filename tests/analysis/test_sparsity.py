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


class _Patches(nn.Module):
    """A conv, then a linear layer on unfolded 2 x 2 patches (rows = images x 4, as
    MobileViT's transformer sees them), then back to a map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        b, c, h, w = y.shape
        p = y.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 2, 4, 1)
        p = self.mix(p.reshape(b * 4, (h // 2) * (w // 2), c))
        back = p.reshape(b, 2, 2, h // 2, w // 2, c).permute(0, 5, 3, 1, 4, 2)
        return self.head(back.reshape(b, c, h, w))


def test_a_layer_that_sees_several_rows_per_image_counts_them_with_their_image() -> None:
    torch.manual_seed(0)
    model = _Patches().eval()
    images = torch.randn(6, 3, 8, 8)
    images[:3] = 0  # half the images give the conv's bias only: other zeros than the rest
    analysis = analyze(model, images)
    stats = analysis.group("conv")
    assert stats.sparsity.shape == (6,)  # one value per image, not per patch row
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, n).register_forward_hook(lambda _m, a, _o, n=n: seen.update({n: a[0]}))
        for n in ("mix", "head")
    ]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    # the reshapes count the conv's channels (c), which ties mix's outputs to them: both mix
    # (on patch rows) and head read the group; eq. 1 averages its consumers
    mix = (seen["mix"] == 0).float().reshape(6, -1).mean(dim=1)
    head = (seen["head"] == 0).float().reshape(6, -1).mean(dim=1)
    np.testing.assert_allclose(stats.sparsity, ((mix + head) / 2).numpy(), atol=1e-6)
    assert (stats.sparsity[:3] > 0.2).all()  # the zero images: half the channels are off


class _OwnConv(torch.nn.Conv2d):
    """A subclass with its own forward: the tracer follows it to F.conv2d (no module call)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def _relu_net(conv: type[torch.nn.Conv2d]) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        conv(8, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3),
    ).eval()  # fmt: skip


def test_the_input_of_an_inlined_convolution_is_measured() -> None:
    images = torch.randn(6, 1, 6, 6)
    plain, inlined = (analyze(_relu_net(c), images) for c in (torch.nn.Conv2d, _OwnConv))
    want, got = plain.group("0").sparsity, inlined.group("0").sparsity
    assert want is not None and got is not None and 0 < want.mean() < 1
    np.testing.assert_allclose(got, want)
