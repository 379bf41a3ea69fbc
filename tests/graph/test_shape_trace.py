"""A forward that branches on spatial sizes traces, specialised to the example's size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunewise.analysis import count_flops
from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.graph.trace import trace
from prunewise.io import load_checkpoint, save_checkpoint
from prunewise.prune import apply_plan, uniform_plan
from prunewise.prune.surgery import zeroed_copy


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's "same" padding, computed from the input as timm's pad_same does."""
    ih, iw = x.size()[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    if ph > 0 or pw > 0:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x


class SameConv(nn.Conv2d):
    """timm's Conv2dSame: a subclass whose forward pads (inlined into F.pad + F.conv2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = SameConv(8, 8, 3, stride=2, groups=8)  # depthwise: its groups follow
        self.b = nn.Conv2d(8, 12, 3, stride=1)
        self.bn = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.a(x))
        y = self.bn(self.b(_same_pad(y, 3, 1)))
        if y.shape[-1] > 4:  # a branch on a spatial size
            y = F.adaptive_avg_pool2d(y, 4)
        return self.head(y.mean((2, 3)))


def test_plain_fx_refuses_and_the_example_size_decides() -> None:
    model = Net().eval()
    with pytest.raises(PrunewiseError, match="no branch on tensor values"):
        trace(model)
    gm = trace(model, input_shape=(3, 17, 17))
    x = torch.randn(3, 3, 17, 17)  # any batch
    assert torch.allclose(gm(x), model(x), atol=1e-6)


def test_it_prunes_exactly_counts_and_saves(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    shape = (3, 17, 17)
    graph = build_channel_graph(model, shape)
    plan = uniform_plan(graph, 0.5, prune_tied=True, importance="l2")
    assert sum(d.removed for d in plan.decisions) > 0
    pruned = apply_plan(graph, plan).eval()
    assert any(d.group == "a.0" and d.removed > 0 for d in plan.decisions)  # through the pads
    x = torch.randn(2, *shape).double()
    with torch.no_grad():
        want = zeroed_copy(graph, plan).double()(x)
        assert torch.allclose(pruned.double()(x), want, atol=1e-10)
    pruned.float()
    assert count_flops(pruned, shape) < count_flops(model, shape)
    path = save_checkpoint(tmp_path / "m.pt", pruned, input_shape=shape)
    again = load_checkpoint(path).model.eval()
    y = torch.randn(4, *shape)
    assert torch.allclose(again(y), pruned(y), atol=1e-6)
    with pytest.raises(PrunewiseError, match="takes inputs of spatial size 17 x 17, got 18 x 18"):
        again(torch.randn(1, 3, 18, 18))  # its pads are those of 17 x 17: refused, not wrong


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace's deprecation
def test_a_specialised_graph_refuses_other_sizes_and_exports() -> None:
    model = Net().eval()
    gm = trace(model, input_shape=(3, 17, 17))
    with pytest.raises(PrunewiseError, match="got 16 x 16"):
        gm(torch.randn(1, 3, 16, 16))
    traced = torch.jit.trace(gm, torch.randn(1, 3, 17, 17))  # the TorchScript exporter's path
    x = torch.randn(2, 3, 17, 17)
    assert torch.allclose(traced(x), model(x), atol=1e-6)
