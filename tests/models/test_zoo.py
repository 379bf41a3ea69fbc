"""The prunewise models: shapes, channels, fx tracing, architecture details, parameter counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.fx
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from prunewise.errors import PrunewiseError
from prunewise.models import build_model, list_models
from prunewise.models.registry import scale_channels
from prunewise.models.resnet_cifar import CifarResNet
from prunewise.models.vgg import VGG_CONFIGS, VGGSmall

PRUNEWISE = [
    "alexnet_small",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "resnet50_small",
    "resnet101_small",
    "vgg11_bn_small",
    "vgg13_bn_small",
    "vgg16_bn_small",
]

# Parameter counts at the defaults (num_classes=10, in_channels=3, width 1.0).
DEFAULT_PARAMS = {
    "alexnet_small": 36_056_010,
    "resnet20": 272_474,
    "resnet32": 466_906,
    "resnet56": 855_770,
    "resnet110": 1_730_714,
    "resnet50_small": 23_520_842,
    "resnet101_small": 42_512_970,
    "vgg11_bn_small": 9_754_698,
    "vgg13_bn_small": 9_939_402,
    "vgg16_bn_small": 15_250_378,
}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_prunewise_names() -> None:
    names = [m.name for m in list_models() if m.source == "prunewise"]
    assert sorted(names) == sorted(PRUNEWISE)
    families = {m.name: m.family for m in list_models() if m.source == "prunewise"}
    assert {families[n] for n in PRUNEWISE if n.startswith("vgg")} == {"vgg"}
    assert {families[n] for n in PRUNEWISE if n.startswith("resnet")} == {"resnet"}
    assert families["alexnet_small"] == "alexnet"


def test_alexnet_small_keeps_most_weights_in_its_fully_connected_layers() -> None:
    model = build_model("alexnet_small", in_channels=1, width=0.25)
    total = _params(model)
    fc = sum(_params(m) for m in model.modules() if isinstance(m, nn.Linear))
    assert total == 2_263_258 and fc / total > 0.9  # AlexNet: about 94 %
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and sum(isinstance(m, nn.Linear) for m in model.modules()) == 3


@pytest.mark.parametrize("name", PRUNEWISE)
def test_builds_for_channels_and_classes(name: str) -> None:
    for in_channels in (1, 3):
        for num_classes in (10, 100):
            model = build_model(name, num_classes=num_classes, in_channels=in_channels).eval()
            first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
            assert first_conv.in_channels == in_channels
            with torch.no_grad():
                out = model(torch.randn(2, in_channels, 32, 32))
            assert out.shape == (2, num_classes)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", PRUNEWISE)
def test_fx_trace_matches_module(name: str, randomize_bn: Callable[..., nn.Module]) -> None:
    model = randomize_bn(build_model(name, num_classes=100, in_channels=1))
    traced = torch.fx.symbolic_trace(model)
    ops = {n.op for n in traced.graph.nodes}
    assert "call_module" in ops
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = traced(x)
    assert got.shape == (2, 100)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_default_parameter_counts() -> None:
    counts = {name: _params(build_model(name)) for name in PRUNEWISE}
    assert counts == DEFAULT_PARAMS


def test_vgg13_width_quarter_has_about_0_6m_parameters() -> None:
    n = _params(build_model("vgg13_bn_small", width=0.25))
    assert 500_000 <= n <= 700_000
    assert n == 623_994


def test_scale_channels_rounds_and_floors_at_8() -> None:
    assert scale_channels(64, 1.0) == 64
    assert scale_channels(512, 0.25) == 128
    assert scale_channels(64, 0.25) == 16
    assert scale_channels(16, 0.25) == 8
    assert scale_channels(64, 0.3) == 19


@pytest.mark.parametrize(
    ("name", "key", "convs"),
    [("vgg11_bn_small", "A", 8), ("vgg13_bn_small", "B", 10), ("vgg16_bn_small", "D", 13)],
)
def test_vgg_structure(name: str, key: str, convs: int) -> None:
    model = build_model(name, num_classes=7, width=0.5)
    assert isinstance(model, VGGSmall)
    assert isinstance(model.features, nn.Sequential) and isinstance(model.head, nn.Sequential)
    feats = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(feats) == convs
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    expected = [scale_channels(c, 0.5) for c in VGG_CONFIGS[key] if c != "M"]
    assert [c.out_channels for c in feats] == expected
    for conv in feats:
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is None
    kinds = [type(m) for m in model.features]
    for i, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d):
            assert kinds[i + 1 : i + 3] == [nn.BatchNorm2d, nn.ReLU]
    hidden = scale_channels(512, 0.5)
    assert [type(m) for m in model.head] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2 + [nn.Conv2d]
    c1, c2, cls = (m for m in model.head if isinstance(m, nn.Conv2d))
    assert (c1.in_channels, c1.out_channels, c1.kernel_size, c1.bias) == (
        hidden,
        hidden,
        (1, 1),
        None,
    )
    assert (c2.in_channels, c2.out_channels, c2.bias) == (hidden, hidden, None)
    assert (cls.in_channels, cls.out_channels, cls.kernel_size) == (hidden, 7, (1, 1))
    assert cls.bias is not None


def test_vgg_train_mode_and_larger_input() -> None:
    model = build_model("vgg11_bn_small", width=0.25).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 3), ("resnet56", 9), ("resnet110", 18)])
def test_cifar_resnet_structure(name: str, blocks: int) -> None:
    model = build_model(name, width=0.5)
    assert isinstance(model, CifarResNet)
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(s) for s in stages] == [blocks] * 3
    assert all(isinstance(b, BasicBlock) for s in stages for b in s)
    assert [s[-1].conv2.out_channels for s in stages] == [8, 16, 32]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.layer1[0].downsample is None
    for stage in (model.layer2, model.layer3):
        conv, bn = stage[0].downsample
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
        assert isinstance(bn, nn.BatchNorm2d)
        assert all(b.downsample is None for b in stage[1:])
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 32


def test_cifar_resnet_rejects_bad_depth() -> None:
    with pytest.raises(PrunewiseError, match="6n\\+2"):
        CifarResNet(21)


def test_bottleneck_small_stem_and_width() -> None:
    model = build_model("resnet50_small", num_classes=100, in_channels=1)
    assert isinstance(model.layer1[0], Bottleneck)
    stem = model.conv1
    assert (stem.in_channels, stem.out_channels) == (1, 64)
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert stem.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 100
    assert _params(build_model("resnet50_small", width=1.0)) == DEFAULT_PARAMS["resnet50_small"]
    with pytest.raises(PrunewiseError, match="no width multiplier"):
        build_model("resnet50_small", width=0.5)
