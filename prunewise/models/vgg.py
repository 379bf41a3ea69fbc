"""VGG with BatchNorm for 32x32 inputs, its fully connected head written as 1x1 convolutions.

Paper A prunes VGG's three fully connected layers like convolutions. Here they are 1x1
convolutions on the 1x1 feature map left by the five max-pools, so one channel-pruning rule
covers the whole network:

``features`` (3x3 conv, BN, ReLU blocks and 5 max-pools: 32x32 -> 1x1)
-> ``pool`` (adaptive average pool to 1x1: the identity at 32x32, lets larger inputs work)
-> ``head`` (conv1x1 C->H, BN, ReLU, conv1x1 H->H, BN, ReLU, conv1x1 H->num_classes with bias)
-> flatten to (N, num_classes).

The layer configurations are torchvision's (``torchvision.models.vgg.cfgs``), with every channel
count scaled by ``width`` (see :func:`prunewise.models.registry.scale_channels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.vgg import cfgs as _TORCHVISION_CFGS

from prunewise.errors import PrunewiseError
from prunewise.models.registry import register_model, scale_channels

__all__ = [
    "VGG_CONFIGS",
    "VGGSmall",
    "make_vgg_features",
    "make_vgg_head",
    "vgg11_bn_small",
    "vgg13_bn_small",
    "vgg16_bn_small",
]

# VGG-11 (A), VGG-13 (B) and VGG-16 (D) from Simonyan & Zisserman; "M" is a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    key: tuple(_TORCHVISION_CFGS[key]) for key in ("A", "B", "D")
}


def make_vgg_features(
    config: Sequence[int | str], *, in_channels: int, width: float
) -> tuple[nn.Sequential, int]:
    """The convolutional part: Conv2d(3x3, bias=False), BN, ReLU per number, MaxPool per "M"."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        if not isinstance(item, int):
            raise PrunewiseError(
                f"bad VGG config entry {item!r}: use channel counts (int) and 'M' for max-pools"
            )
        out = scale_channels(item, width)
        layers += [
            nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    if not any(isinstance(m, nn.Conv2d) for m in layers):
        raise PrunewiseError("VGG config has no convolution; give at least one channel count")
    return nn.Sequential(*layers), channels


def make_vgg_head(channels: int, hidden: int, num_classes: int) -> nn.Sequential:
    """Paper A's three fully connected layers as 1x1 convolutions (BN and ReLU after two)."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, kernel_size=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, num_classes, kernel_size=1, bias=True),
    )


class VGGSmall(nn.Module):
    """VGG-BN for 32x32 inputs with a 1x1-convolution head; gives (N, num_classes) logits."""

    def __init__(
        self,
        config: Sequence[int | str],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.features, channels = make_vgg_features(config, in_channels=in_channels, width=width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = make_vgg_head(channels, channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision VGG's scheme: Kaiming convolutions, unit BN, small classifier weights."""
        classifier = self.head[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not classifier:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(classifier.weight, 0.0, 0.01)
        nn.init.zeros_(classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features, 1x1 pool, 1x1-convolution head, flattened to (N, num_classes)."""
        return torch.flatten(self.head(self.pool(self.features(x))), 1)


_DESCRIPTION = "VGG-{depth}-BN (config {key}) for 32x32 input, FC head as 1x1 conv+BN+ReLU"


@register_model("vgg11_bn_small", family="vgg", description=_DESCRIPTION.format(depth=11, key="A"))
def vgg11_bn_small(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGGSmall:
    """VGG-11-BN (config A) for 32x32 inputs."""
    return VGGSmall(VGG_CONFIGS["A"], num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("vgg13_bn_small", family="vgg", description=_DESCRIPTION.format(depth=13, key="B"))
def vgg13_bn_small(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGGSmall:
    """VGG-13-BN (config B) for 32x32 inputs; about 0.6 M parameters at width 0.25."""
    return VGGSmall(VGG_CONFIGS["B"], num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("vgg16_bn_small", family="vgg", description=_DESCRIPTION.format(depth=16, key="D"))
def vgg16_bn_small(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGGSmall:
    """VGG-16-BN (config D) for 32x32 inputs."""
    return VGGSmall(VGG_CONFIGS["D"], num_classes=num_classes, in_channels=in_channels, width=width)
