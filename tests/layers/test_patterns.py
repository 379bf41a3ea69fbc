"""Every common CNN pattern prunes, through the whole contract (tests/layers/contract.py).

Each pattern is a tiny model with random weights; the contract checks exact surgery, FLOPs
and parameters against fvcore, the checkpoint round trip, ONNX Runtime parity and INT8.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.layers.contract import check_contract


def _cbr(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Head(nn.Module):
    """Global pooling and a classifier, after any body."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SplitConvs(nn.Module):
    """torch.split along channels into two convolutions, concatenated again."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 24)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.stem(x), [8, 16], dim=1)
        return self.head(torch.cat([self.a(a), self.b(b)], dim=1))


class PartialConv(nn.Module):
    """FasterNet's partial convolution: a conv on the first quarter, the rest passed on."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 32)
        self.part = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.mix = _cbr(32, 16)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.cat([self.part(y[:, :8]), y[:, 8:]], dim=1)
        return self.head(self.mix(y))


class Gate(nn.Module):
    """Gated unit: chunk into two halves, a * sigmoid(b)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 32)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        return self.head(a * torch.sigmoid(b))


class Shuffle(nn.Module):
    """ShuffleNet V2 unit: chunk, a branch, concatenation, channel shuffle (computed sizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.branch = nn.Sequential(_cbr(8, 8), nn.Conv2d(8, 8, 3, padding=1, groups=8), _cbr(8, 8))
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for _ in range(2):
            x1, x2 = x.chunk(2, dim=1)
            y = torch.cat([x1, self.branch(x2)], dim=1)
            b, c, h, w = y.shape
            x = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(x)


class LiteralShuffle(nn.Module):
    """A channel shuffle written with literal sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 12)
        self.mid = _cbr(12, 12)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = y.view(-1, 3, 4, 8, 8).transpose(1, 2).flatten(1, 2)
        return self.head(self.mid(y))


class ChannelShuffle(nn.Module):
    """nn.ChannelShuffle (which torch's ONNX exporter cannot export)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 12)
        self.shuffle = nn.ChannelShuffle(3)
        self.mid = _cbr(12, 12)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.shuffle(self.stem(x))))


class PixelShuffle(nn.Module):
    """Sub-pixel upsampling (blocks of r*r channels) and its inverse, module and function."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.up = nn.PixelShuffle(2)
        self.mid = _cbr(4, 16)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mid(self.up(self.stem(x)))
        y = F.pixel_unshuffle(F.pixel_shuffle(y, 2), 2)
        return self.head(y)


class Transposed(nn.Module):
    """A decoder: transposed convolutions, plain and depthwise."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.up = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.dw = nn.ConvTranspose2d(12, 12, 3, padding=1, groups=12)
        self.bn = nn.BatchNorm2d(12)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.dw(self.up(self.stem(x))))))


class Grouped(nn.Module):
    """ResNeXt block: 1x1, grouped 3x3, 1x1, residual; and a depthwise with multiplier 2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.reduce = _cbr(16, 16)
        self.group = _cbr(16, 16, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.multiplier = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1, groups=16), nn.BatchNorm2d(32)
        )
        self.head = Head(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(y + self.expand(self.group(self.reduce(y))))
        return self.head(torch.relu(self.multiplier(y)))


class Norms(nn.Module):
    """GroupNorm, InstanceNorm and PReLU(C)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.b = nn.Conv2d(16, 12, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(12, affine=True)
        self.act = nn.PReLU(12)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.inorm(self.b(torch.relu(self.gn(self.a(x)))))))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise conv, permute, LayerNorm and Linear on the last dimension, layer
    scale, permute back, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.pw1, self.pw2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.gamma = nn.Parameter(torch.ones(16) * 0.1)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pw2(F.gelu(self.pw1(y)))
        return self.head(x + y.permute(0, 3, 1, 2))


class LayerNorm2d(nn.Module):
    """A hand-written channels-first LayerNorm and a layer scale of shape (C, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.weight = nn.Parameter(torch.ones(16))
        self.bias = nn.Parameter(torch.zeros(16))
        self.scale = nn.Parameter(torch.ones(16, 1, 1))
        self.b = nn.Conv2d(16, 8, 1)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        u = y.mean(1, keepdim=True)
        s = (y - u).pow(2).mean(1, keepdim=True)
        y = (y - u) / torch.sqrt(s + 1e-6)
        y = self.weight[:, None, None] * y + self.bias[:, None, None]
        return self.head(self.b(self.scale * y))


class LayerScale(nn.Module):
    """Per-channel parameters (C, 1, 1) and (C,) reshaped, multiplied and added."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(3, 16)
        self.scale = nn.Parameter(torch.rand(16, 1, 1))
        self.shift = nn.Parameter(torch.rand(16))
        self.b = _cbr(16, 8)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) * self.scale + self.shift.reshape(1, -1, 1, 1)
        return self.head(self.b(y))


class LinearSE(nn.Module):
    """Squeeze-excitation with Linear layers: view(b, c) -> Linear -> view(b, c, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(3, 16)
        self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        b, c, _, _ = y.size()
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3)).view(b, c)))))
        return self.head(y * s.view(b, c, 1, 1).expand_as(y))


class Decoder(nn.Module):
    """A Linear whose features become a feature map: view(-1, C, H, W) into a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3 * 8 * 8, 16 * 4 * 4)
        self.conv = _cbr(16, 8)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.enc(x.flatten(1)).view(-1, 16, 4, 4)
        return self.head(self.conv(y))


class CalledTwice(nn.Module):
    """One convolution applied twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(3, 16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.head(self.bn(self.shared(torch.relu(self.shared(y)))))


class SizedByOther(nn.Module):
    """A tensor reshaped with a size read from another tensor's channels (MaxViT's attention:
    `out.reshape(B, G, P, D)` with D from the block input): both must keep equal counts."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _cbr(3, 16), nn.Conv2d(3, 16, 1)
        self.head = Head(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        b, c, h, w = y.shape
        z = self.b(x).flatten(2).transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return self.head(torch.cat([y.view(b, c, -1).view(b, c, h, w), z], 1))


PATTERNS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "split into convolutions": (SplitConvs, (3, 8, 8)),
    "partial convolution": (PartialConv, (3, 8, 8)),
    "gate a * sigmoid(b)": (Gate, (3, 8, 8)),
    "ShuffleNet V2 unit": (Shuffle, (3, 8, 8)),
    "literal channel shuffle": (LiteralShuffle, (3, 8, 8)),
    "nn.ChannelShuffle": (ChannelShuffle, (3, 8, 8)),
    "pixel shuffle": (PixelShuffle, (3, 8, 8)),
    "transposed convolutions": (Transposed, (3, 8, 8)),
    "grouped and multiplier convolutions": (Grouped, (3, 8, 8)),
    "GroupNorm, InstanceNorm, PReLU": (Norms, (3, 8, 8)),
    "ConvNeXt block": (ConvNeXtBlock, (3, 16, 16)),
    "channels-first LayerNorm": (LayerNorm2d, (3, 8, 8)),
    "layer scale": (LayerScale, (3, 8, 8)),
    "Linear squeeze-excitation": (LinearSE, (3, 8, 8)),
    "Linear decoder": (Decoder, (3, 8, 8)),
    "module called twice": (CalledTwice, (3, 8, 8)),
    "reshaped by another tensor's size": (SizedByOther, (3, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_meets_the_contract(name: str, tmp_path: Path) -> None:
    make, shape = PATTERNS[name]
    outcome = check_contract(make(), shape, tmp_path)
    assert sum(outcome.removed.values()) > 0


class _ComputedSize(nn.Module):
    """A size computed from a count of channels (c // 2) sizes another tensor's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _cbr(3, 16), nn.Conv2d(3, 8, 1)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        half = y.shape[1] // 2
        z = self.b(x).reshape(x.shape[0], half, -1).reshape(x.shape[0], half, 8, 8)
        return self.head(y + torch.cat([z, z], 1))


class _FixedSized(nn.Module):
    """A tensor of fixed channels (a constant) sized by a count of prunable channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(3, 16)
        self.table = nn.Parameter(torch.randn(16 * 64))
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        _b, c, h, w = y.shape
        return self.head(y + self.table.reshape(1, c, h, w))


def test_a_computed_or_fixed_size_keeps_the_counted_channels_whole() -> None:
    from prunewise.graph import build_channel_graph

    for make in (_ComputedSize, _FixedSized):
        group = build_channel_graph(make(), (3, 8, 8)).group("a.0")
        assert not group.prunable, make.__name__
        assert "count of them" in group.blocked or "computed from other" in group.blocked


def test_a_size_read_from_other_channels_ties_them() -> None:
    from prunewise.graph import build_channel_graph

    group = build_channel_graph(SizedByOther(), (3, 8, 8)).group("a.0")
    assert group.prunable and set(group.producers) == {"a.0", "b"}  # tied by the count
