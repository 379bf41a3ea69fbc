"""ResNets for 32x32 inputs: CIFAR-style basic-block ResNets and torchvision bottleneck ResNets.

``resnet20/32/56/110`` follow He et al. (2016), section 4.2: a 3x3 stem, three stages of n basic
blocks each (16, 32 and 64 channels times ``width``; depth = 6n + 2), global average pooling and
a linear classifier. Shortcuts that change shape are 1x1 convolution + BN (option B). The blocks
are torchvision's ``BasicBlock`` and the attribute names match torchvision's ``ResNet``
(``conv1``, ``bn1``, ``layer1``..., ``avgpool``, ``fc``).

``resnet50_small`` and ``resnet101_small`` are torchvision's ``resnet50``/``resnet101`` with the
7x7 stride-2 stem replaced by a 3x3 stride-1 convolution and the max-pool removed, so 32x32
inputs keep enough resolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet, conv1x1, conv3x3

from prunewise.errors import PrunewiseError
from prunewise.models.registry import register_model, scale_channels

__all__ = [
    "CIFAR_STAGE_CHANNELS",
    "CifarResNet",
    "bottleneck_resnet_small",
    "resnet20",
    "resnet32",
    "resnet50_small",
    "resnet56",
    "resnet101_small",
    "resnet110",
]

CIFAR_STAGE_CHANNELS = (16, 32, 64)


class CifarResNet(nn.Module):
    """Basic-block ResNet of depth 6n+2 for 32x32 inputs (option-B shortcuts)."""

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise PrunewiseError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 56, 110...), got {depth}"
            )
        blocks = (depth - 2) // 6
        c1, c2, c3 = (scale_channels(c, width) for c in CIFAR_STAGE_CHANNELS)
        self.inplanes = c1
        self.conv1 = conv3x3(in_channels, c1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(c1, blocks, stride=1)
        self.layer2 = self._make_stage(c2, blocks, stride=2)
        self.layer3 = self._make_stage(c3, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)
        self._init_weights()

    def _make_stage(self, planes: int, blocks: int, *, stride: int) -> nn.Sequential:
        """``blocks`` torchvision BasicBlocks; the first one may downsample (1x1 conv + BN)."""
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes)
            )
        layers: list[nn.Module] = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """torchvision ResNet's scheme: Kaiming convolutions, unit BN, default linear layer."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, three stages, global average pool, linear classifier: (N, num_classes)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar(depth: int) -> str:
    n = (depth - 2) // 6
    return f"CIFAR ResNet-{depth}: {n} basic blocks per stage, 16/32/64 channels, conv shortcuts"


@register_model("resnet20", family="resnet", description=_cifar(20))
def resnet20(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-20 (3 basic blocks per stage)."""
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("resnet32", family="resnet", description=_cifar(32))
def resnet32(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-32 (5 basic blocks per stage)."""
    return CifarResNet(32, num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("resnet56", family="resnet", description=_cifar(56))
def resnet56(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-56 (9 basic blocks per stage)."""
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("resnet110", family="resnet", description=_cifar(110))
def resnet110(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-110 (18 basic blocks per stage)."""
    return CifarResNet(110, num_classes=num_classes, in_channels=in_channels, width=width)


def bottleneck_resnet_small(
    arch: Callable[..., ResNet],
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
) -> ResNet:
    """A torchvision bottleneck ResNet with a 3x3 stride-1 stem and no max-pool, for 32x32 input."""
    if width != 1.0:
        raise PrunewiseError(
            f"{arch.__name__}_small has no width multiplier (torchvision's ResNet fixes its stage "
            f"widths), got width={width:g}; leave width unset, or use resnet20/32/56/110 or "
            "vgg*_bn_small to scale channels"
        )
    model = arch(weights=None, num_classes=num_classes, width_per_group=64)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


_BOTTLENECK = (
    "torchvision ResNet-{depth}, 3x3 stride-1 stem, no max-pool, for 32x32 input; no width"
)


@register_model("resnet50_small", family="resnet", description=_BOTTLENECK.format(depth=50))
def resnet50_small(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """torchvision ResNet-50 adapted to 32x32 inputs."""
    return bottleneck_resnet_small(
        torchvision.models.resnet50,
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
    )


@register_model("resnet101_small", family="resnet", description=_BOTTLENECK.format(depth=101))
def resnet101_small(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """torchvision ResNet-101 adapted to 32x32 inputs."""
    return bottleneck_resnet_small(
        torchvision.models.resnet101,
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
    )
