"""BN folding keeps the model's outputs; BNs that follow no conv or linear stay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunewise.graph import build_channel_graph
from prunewise.models import build_model
from prunewise.prune import apply_plan, uniform_plan
from prunewise.quant import fold_batchnorm, unfolded_batchnorms


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    ("name", "shape", "pruned"),
    [
        ("vgg13_bn_small", (1, 32, 32), False),
        ("vgg13_bn_small", (1, 32, 32), True),
        ("resnet20", (3, 32, 32), False),
        ("resnet20", (3, 32, 32), True),
    ],
)
def test_folded_model_gives_the_same_outputs(name, shape, pruned, randomize_bn) -> None:
    model = randomize_bn(build_model(name, num_classes=10, in_channels=shape[0], width=0.5))
    if pruned:
        graph = build_channel_graph(model, shape)
        model = randomize_bn(apply_plan(graph, uniform_plan(graph, 0.4)))
    folded = fold_batchnorm(model)
    x = torch.randn(16, *shape)
    with torch.no_grad():
        assert _rel(folded(x), model(x)) <= 1e-5
    assert unfolded_batchnorms(folded) == []
    assert any(isinstance(m, _BatchNorm) for m in model.modules())  # original untouched


def test_torchvision_resnet18_folds_every_bn(randomize_bn) -> None:
    model = randomize_bn(torchvision.models.resnet18(weights=None))
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _rel(folded(x), model(x)) <= 1e-5
    assert unfolded_batchnorms(folded) == []


class _LinearBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 6)
        self.bn = nn.BatchNorm1d(6)
        self.pre = nn.BatchNorm1d(12)  # follows no layer: cannot be folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.fc(self.pre(x))))


def test_linear_bn_folds_and_a_leading_bn_stays(randomize_bn) -> None:
    model = randomize_bn(_LinearBN())
    folded = fold_batchnorm(model)
    x = torch.randn(32, 12)
    with torch.no_grad():
        assert _rel(folded(x), model(x)) <= 1e-5
    assert unfolded_batchnorms(folded) == ["pre"]


class _SharedConv(nn.Module):
    """A conv whose output feeds a BN and something else: folding would change the other."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_bn_after_a_shared_conv_is_not_folded(randomize_bn) -> None:
    model = randomize_bn(_SharedConv())
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-6)
    assert unfolded_batchnorms(folded) == ["bn"]


class _BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: checks the rank, calls F.batch_norm, then its activation."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, "expected 4-D input")  # a user that reads only the shape
        y = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return self.act(y)


class _Inlined(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), _BatchNormAct(8)
        self.pre = _BatchNormAct(3)  # follows no layer: stays

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pre(x)))


def test_an_inlined_batch_norm_folds_and_names_what_stays(randomize_bn) -> None:
    model = randomize_bn(_Inlined()).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert _rel(folded(x), model(x)) <= 1e-5
    assert unfolded_batchnorms(folded) == ["pre"]
    assert unfolded_batchnorms(model) == ["bn", "pre"]


def test_timm_batch_norm_act_layers_all_fold(randomize_bn) -> None:
    timm = pytest.importorskip("timm")
    model = randomize_bn(timm.create_model("mobilenetv3_small_050", num_classes=10)).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _rel(folded(x), model(x)) <= 1e-5
    assert unfolded_batchnorms(folded) == []


class _Doubled(nn.Conv2d):
    """A Conv2d whose forward does more than convolve: a BN after it must not fold into it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class _SameConv(nn.Conv2d):
    """A Conv2d subclass with a forward of its own that computes exactly the convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


@pytest.mark.parametrize(("cls", "folds"), [(_Doubled, False), (_SameConv, True)])
def test_a_registered_subclass_folds_only_when_it_computes_as_its_base(
    cls, folds, randomize_bn
) -> None:
    from prunewise.layers import layer_spec, register_layer
    from prunewise.layers.registry import _REGISTRY

    register_layer(cls, layer_spec(nn.Conv2d))  # as docs/method.md shows
    try:
        model = nn.Sequential(cls(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        randomize_bn(model)
        model.eval()
        x = torch.randn(2, 3, 8, 8)
        folded = fold_batchnorm(model, (3, 8, 8))
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
        assert (unfolded_batchnorms(folded) == []) is folds
    finally:
        del _REGISTRY[cls]
