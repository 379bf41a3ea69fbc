"""Tiny models and synthetic 8x8 image sets for fast training tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from prunewise.data import ImageView, TensorImages


class TinyCNN(nn.Module):
    """Two conv + BN + ReLU blocks, dropout and a linear head."""

    def __init__(self, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def tiny_cnn(num_classes: int = 3, seed: int = 0, width: int = 8) -> TinyCNN:
    """A `TinyCNN` whose initial weights depend only on `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyCNN(num_classes, width)


def images(n: int = 96, seed: int = 0, augment: bool = True) -> TensorImages:
    """`n` random 3x8x8 uint8 images; the label is the brightest channel (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = x.float().mean(dim=(2, 3)).argmax(dim=1)
    view = ImageView(3, 8, 0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment)
    return TensorImages(x, y, view)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models train fastest (and least disturbed by a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_model() -> Callable[..., TinyCNN]:
    """Build a seeded `TinyCNN`."""
    return tiny_cnn


@pytest.fixture
def make_images() -> Callable[..., TensorImages]:
    """Build a seeded synthetic image set."""
    return images
