"""Parameters and FLOPs agree with fvcore, before and after pruning."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from fvcore.nn import FlopCountAnalysis

from prunewise.analysis import count_flops, count_params, layer_flops
from prunewise.graph import build_channel_graph
from prunewise.prune import apply_plan, uniform_plan

SHAPE = (3, 96, 96)


def _fvcore(model: torch.nn.Module) -> int:
    logging.disable(logging.WARNING)
    try:
        fa = FlopCountAnalysis(model.eval(), torch.zeros(1, *SHAPE))
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        return int(fa.total())
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", ["vgg13_bn", "resnet18", "resnet50", "resnet101", "mobilenet_v2"])
def test_flops_and_params_agree_with_fvcore(name: str, randomize_bn) -> None:
    model = randomize_bn(torchvision.models.get_model(name, weights=None))
    graph = build_channel_graph(model, SHAPE)
    pruned = apply_plan(graph, uniform_plan(graph, 0.4))
    for m in (model, pruned):
        ours, ref = count_flops(m, SHAPE), _fvcore(m)
        assert abs(ours - ref) <= 0.01 * ref, (ours, ref)
        assert count_params(m) == sum(p.numel() for p in m.parameters())
    assert count_flops(pruned, SHAPE) < 0.5 * count_flops(model, SHAPE)


def test_conv_flops_by_hand() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.Conv2d(8, 8, 3, stride=2, groups=8),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    )
    per_layer = layer_flops(model, (3, 10, 10))
    assert per_layer["0"] == 8 * 10 * 10 * 3 * 9
    assert per_layer["1"] == 2 * 8 * 10 * 10
    assert per_layer["2"] == 8 * 4 * 4 * 1 * 9
    assert per_layer["3"] == 8 * 4 * 4
    assert per_layer["5"] == 8 * 5


class _Product(torch.nn.Module):
    """A 1x1 convolution, then a product of its output with itself in one of three spellings."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 1)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2)
        t = y.transpose(1, 2)
        if self.how == "operator":
            return y @ t
        return y.matmul(t) if self.how == "method" else torch.matmul(y, t)


@pytest.mark.parametrize("how", ["operator", "method", "function"])
def test_every_spelling_of_a_matrix_product_counts(how: str) -> None:
    model = _Product(how).eval()
    fv = FlopCountAnalysis(model, torch.zeros(1, 3, 16, 16))
    fv.unsupported_ops_warnings(False)
    assert count_flops(model, (3, 16, 16)) == int(fv.total()) == 6144 + 8 * 8 * 256
