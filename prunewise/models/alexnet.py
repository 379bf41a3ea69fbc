"""An AlexNet-style network for 32x32 inputs: five convolutions and three fully connected layers.

Paper B compresses AlexNet, whose fully connected layers hold about 94 % of the weights; this
model keeps that shape at a size a CPU can train on Fashion-MNIST or CIFAR:

``features``: conv5x5(64) BN ReLU pool, conv5x5(192) BN ReLU pool, conv3x3(384) BN ReLU,
conv3x3(256) BN ReLU, conv3x3(256) BN ReLU pool (32x32 -> 4x4),
``classifier``: dropout, linear(256*4*4 -> 4096) ReLU, dropout, linear(4096 -> 4096) ReLU,
linear(4096 -> num_classes).

Every channel and hidden-unit count is scaled by ``width`` (0.25 gives 2.3 M parameters, 93 %
of them in the fully connected layers, and 16 M multiply-accumulates per image). AlexNet has no
BatchNorm; this one has it after each convolution so that it trains in a few epochs and channel
pruning can rank channels by |gamma| (deployment folds it away).
"""

from __future__ import annotations

import torch
from torch import nn

from prunewise.models.registry import register_model, scale_channels

__all__ = ["AlexNetSmall", "alexnet_small"]

_CONVS = ((64, 5, True), (192, 5, True), (384, 3, False), (256, 3, False), (256, 3, True))
_HIDDEN = 4096


class AlexNetSmall(nn.Module):
    """AlexNet-style CNN for 32x32 inputs; gives (N, num_classes) logits."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out, kernel, pool in _CONVS:
            out = scale_channels(out, width)
            layers += [
                nn.Conv2d(channels, out, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if pool:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        hidden = scale_channels(_HIDDEN, width)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(channels * 16, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features, 4x4 pool, flatten, three fully connected layers."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model(
    "alexnet_small",
    family="alexnet",
    description="AlexNet-style 5 conv (+BN) + 3 FC for 32x32 input; FC layers hold most weights",
)
def alexnet_small(
    *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
) -> AlexNetSmall:
    """AlexNet-style network for 32x32 inputs (paper B's setting at CPU size with width 0.25)."""
    return AlexNetSmall(num_classes=num_classes, in_channels=in_channels, width=width)
