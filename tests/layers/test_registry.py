"""Every registered layer type goes through the whole contract, and the registry's API holds.

`EXAMPLES` has one small model per registered type (a test fails when a type is registered
without one): a convolution makes channels, the layer acts on them, a convolution reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph, trace
from prunewise.layers import LayerSpec, QuantRule, layer_spec, register_layer
from prunewise.layers.registry import _REGISTRY, is_leaf_layer
from prunewise.layers.weighted import conv_channels
from prunewise.prune import GroupDecision, PruningPlan, apply_plan
from prunewise.prune.surgery import zeroed_copy
from tests.layers.contract import check_contract


class Pool(nn.Module):
    """Global average over every dimension after the channels, then a classifier."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(2).mean(2))


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_SHAPE = {1: (3, 16), 2: (3, 8, 8), 3: (3, 4, 6, 6)}


def around(layer: nn.Module, dims: int = 2, *, out: int = 8) -> tuple[nn.Module, tuple]:
    """conv(3 -> 8) -> BN -> ReLU -> layer -> conv(out -> 6) -> BN -> ReLU -> pool -> fc."""
    conv, bn = _CONV[dims], _BN[dims]
    model = nn.Sequential(
        conv(3, 8, 3, padding=1), bn(8), nn.ReLU(), layer,
        conv(out, 6, 1), bn(6), nn.ReLU(), Pool(6),
    )  # fmt: skip
    return model, _SHAPE[dims]


class ChannelsLast(nn.Module):
    """permute -> layer on the last dimension -> permute back."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _linear() -> tuple[nn.Module, tuple]:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5),
    )  # fmt: skip
    return model, (3, 8, 8)


def _unflatten() -> tuple[nn.Module, tuple]:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(2),
        nn.Unflatten(2, (8, 8)), nn.Conv2d(8, 6, 1), Pool(6),
    )  # fmt: skip
    return model, (3, 8, 8)


class Attention(nn.Module):
    """Convolution features as tokens: attention with queries of 64 tokens and keys and values
    of 16 pooled tokens of other widths (its channels stay whole; the stem prunes)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.q, self.kv = nn.Conv2d(8, 16, 1), nn.Conv2d(8, 8, 1)
        self.attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        q = self.q(y).flatten(2).transpose(1, 2)
        kv = self.kv(F.avg_pool2d(y, 2)).flatten(2).transpose(1, 2)
        out, _ = self.attn(q, kv, kv)
        return self.fc(out.mean(1))


def _same_type(cls: type) -> Callable[[], tuple[nn.Module, tuple]]:
    return lambda: around(cls())


EXAMPLES: dict[type, Callable[[], tuple[nn.Module, tuple]]] = {
    nn.Conv1d: lambda: around(nn.Identity(), 1),
    nn.Conv2d: lambda: around(nn.Conv2d(8, 8, 3, padding=1, groups=2)),
    nn.Conv3d: lambda: around(nn.Identity(), 3),
    nn.ConvTranspose1d: lambda: around(nn.ConvTranspose1d(8, 8, 2, stride=2), 1),
    nn.ConvTranspose2d: lambda: around(nn.ConvTranspose2d(8, 8, 3, padding=1, groups=8)),
    nn.ConvTranspose3d: lambda: around(nn.ConvTranspose3d(8, 8, 1), 3),
    nn.Linear: _linear,
    _BatchNorm: lambda: around(nn.BatchNorm2d(8, affine=False)),
    nn.SyncBatchNorm: lambda: around(nn.SyncBatchNorm(8)),
    _InstanceNorm: lambda: around(nn.InstanceNorm1d(8, affine=True), 1),
    nn.GroupNorm: lambda: around(nn.GroupNorm(4, 8)),
    nn.LayerNorm: lambda: around(ChannelsLast(nn.LayerNorm(8))),
    nn.PReLU: lambda: around(nn.PReLU(8)),
    nn.AdaptiveAvgPool1d: lambda: around(nn.AdaptiveAvgPool1d(4), 1),
    nn.AdaptiveAvgPool2d: lambda: around(nn.AdaptiveAvgPool2d(4)),
    nn.AdaptiveAvgPool3d: lambda: around(nn.AdaptiveAvgPool3d(2), 3),
    nn.AdaptiveMaxPool1d: lambda: around(nn.AdaptiveMaxPool1d(4), 1),
    nn.AdaptiveMaxPool2d: lambda: around(nn.AdaptiveMaxPool2d(4)),
    nn.AdaptiveMaxPool3d: lambda: around(nn.AdaptiveMaxPool3d(2), 3),
    nn.AvgPool1d: lambda: around(nn.AvgPool1d(2), 1),
    nn.AvgPool2d: lambda: around(nn.AvgPool2d(2)),
    nn.AvgPool3d: lambda: around(nn.AvgPool3d(2), 3),
    nn.MaxPool1d: lambda: around(nn.MaxPool1d(2), 1),
    nn.MaxPool2d: lambda: around(nn.MaxPool2d(2)),
    nn.MaxPool3d: lambda: around(nn.MaxPool3d(2), 3),
    nn.LPPool1d: lambda: around(nn.LPPool1d(2, 2), 1),
    nn.LPPool2d: lambda: around(nn.LPPool2d(2, 2)),
    nn.ZeroPad1d: lambda: around(nn.ZeroPad1d(1), 1),
    nn.ZeroPad2d: lambda: around(nn.ZeroPad2d(1)),
    nn.ZeroPad3d: lambda: around(nn.ZeroPad3d(1), 3),
    nn.ConstantPad1d: lambda: around(nn.ConstantPad1d(1, 0.5), 1),
    nn.ConstantPad2d: lambda: around(nn.ConstantPad2d(1, 0.5)),
    nn.ConstantPad3d: lambda: around(nn.ConstantPad3d(1, 0.5), 3),
    nn.ReflectionPad1d: lambda: around(nn.ReflectionPad1d(1), 1),
    nn.ReflectionPad2d: lambda: around(nn.ReflectionPad2d(1)),
    nn.ReplicationPad1d: lambda: around(nn.ReplicationPad1d(1), 1),
    nn.ReplicationPad2d: lambda: around(nn.ReplicationPad2d(1)),
    nn.Upsample: lambda: around(nn.Upsample(scale_factor=2, mode="bilinear")),
    nn.Flatten: _unflatten,
    nn.Unflatten: _unflatten,
    nn.Softmax: lambda: around(nn.Softmax(dim=-1)),
    nn.LogSoftmax: lambda: around(nn.LogSoftmax(dim=1)),
    nn.Softmax2d: lambda: around(nn.Softmax2d()),
    nn.PixelShuffle: lambda: around(nn.PixelShuffle(2), out=2),
    nn.PixelUnshuffle: lambda: around(nn.PixelUnshuffle(2), out=32),
    nn.ChannelShuffle: lambda: around(nn.ChannelShuffle(2)),
    nn.LeakyReLU: lambda: around(nn.LeakyReLU(0.1)),
    nn.Dropout1d: lambda: around(nn.Dropout1d(), 1),
    nn.ELU: lambda: around(nn.ELU(0.5)),
    nn.Hardtanh: lambda: around(nn.Hardtanh(-0.5, 0.5)),
    nn.MultiheadAttention: lambda: (Attention(), (3, 8, 8)),
    **{
        cls: _same_type(cls)
        for cls in (
            nn.ReLU,
            nn.ReLU6,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.SELU,
            nn.CELU,
            nn.GELU,
            nn.SiLU,
            nn.Mish,
            nn.Sigmoid,
            nn.Tanh,
            nn.Softplus,
            nn.Softsign,
            nn.LogSigmoid,
            nn.Tanhshrink,
            nn.Softshrink,
            nn.Hardshrink,
            nn.Identity,
            nn.Dropout,
            nn.Dropout2d,
            nn.Dropout3d,
            nn.AlphaDropout,
            nn.FeatureAlphaDropout,
        )
    },
}


def test_every_registered_type_has_an_example() -> None:
    missing = sorted(cls.__name__ for cls in _REGISTRY if cls not in EXAMPLES)
    assert not missing, f"register_layer without a contract example: {missing}"


@pytest.mark.parametrize(
    "cls", sorted(EXAMPLES, key=lambda c: c.__name__), ids=lambda c: c.__name__
)
def test_registered_layer_meets_the_contract(cls: type, tmp_path: Path) -> None:
    model, shape = EXAMPLES[cls]()
    assert any(isinstance(m, cls) for m in model.modules())
    outcome = check_contract(model, shape, tmp_path)
    assert outcome.removed


# --- user layers -------------------------------------------------------------------------------


class MyConv(nn.Conv2d):
    """A user's subclass of Conv2d that keeps its forward: a leaf of the trace."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tag = "mine"


class SameConv(nn.Conv2d):
    """A subclass that overrides forward ("same" padding, as timm's Conv2dSame): inlined."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, groups=self.groups)


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: batch norm and an activation in one forward (inlined)."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return self.act(y)


class Scaler(nn.Module):
    """A user layer the tracer cannot see into (it calls .item()), registered once."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = float(x.abs().max().item() > 0)
        return F.conv2d(x, self.weight) * factor


def _scaler_slice(m: Scaler, keep) -> None:
    w = m.weight
    if "out" in keep:
        w = w[torch.as_tensor(keep["out"])]
    if "in" in keep:
        w = w[:, torch.as_tensor(keep["in"])]
    m.weight = nn.Parameter(w.clone())


def _scaler_zero(m: Scaler, removed) -> None:
    if "out" in removed:
        m.weight[torch.as_tensor(removed["out"])] = 0


def _user_model(layer: nn.Module) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), layer,
        nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 1), Pool(6),
    )  # fmt: skip


@pytest.mark.parametrize(
    "layer", [MyConv(4, 8, 3, padding=1), SameConv(4, 8, 3)], ids=["kept forward", "own forward"]
)
def test_a_subclass_of_conv2d_prunes_exactly(layer: nn.Module, tmp_path: Path) -> None:
    model = _user_model(layer)
    leaf = is_leaf_layer(layer)
    assert leaf == isinstance(layer, MyConv)
    calls = {str(n.target) for n in trace(model).graph.nodes if n.op == "call_module"}
    assert ("3" in calls) == leaf  # a leaf is one call; the other is followed op by op
    outcome = check_contract(model, (3, 8, 8), tmp_path)
    assert outcome.removed and outcome.exact


def test_an_inlined_batchnorm_with_activation_prunes_exactly(tmp_path: Path) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), BatchNormAct(8), nn.Conv2d(8, 6, 1), BatchNormAct(6),
        Pool(6),
    )  # fmt: skip
    outcome = check_contract(model, (3, 8, 8), tmp_path)
    assert outcome.graph.group("0").params  # the batch norm's tensors are sliced with it


def test_a_registered_user_layer_is_a_leaf_and_prunes_exactly(tmp_path: Path) -> None:
    model = _user_model(Scaler(8))
    with pytest.raises(PrunewiseError, match="cannot trace"):
        build_channel_graph(model, (3, 8, 8))
    register_layer(
        Scaler,
        LayerSpec(
            channels=lambda op, m: conv_channels(op, 4, m.weight.shape[0], 1),
            slice=_scaler_slice,
            zero=_scaler_zero,
            quant=QuantRule.FLOAT,
        ),
    )
    try:
        graph = build_channel_graph(model, (3, 8, 8))
        assert graph.group("3").consumers == ("6",) and graph.group("0").consumers == ("3",)
        plan = PruningPlan(
            (GroupDecision("0", 4, (0, 2)), GroupDecision("3", 8, (1, 2, 5, 7))), (3, 8, 8)
        )
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            got = apply_plan(graph, plan).eval()(x)
            want = zeroed_copy(graph, plan).eval()(x)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    finally:
        del _REGISTRY[Scaler]


def test_layer_spec_follows_the_class_hierarchy() -> None:
    assert layer_spec(nn.BatchNorm2d(4)) is layer_spec(_BatchNorm)
    assert layer_spec(MyConv(1, 1, 1)) is layer_spec(nn.Conv2d)
    assert layer_spec(nn.LSTM(2, 2)) is None
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register_layer(int, layer_spec(nn.Conv2d))  # type: ignore[arg-type]
