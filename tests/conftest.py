"""Shared fixtures: deterministic torch, models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.affine:
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.05)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return model.eval()


@pytest.fixture
def randomize_bn() -> Callable[..., nn.Module]:
    """Give every BatchNorm random gamma, beta and running statistics (and set eval mode)."""
    return _randomize


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker computes on one thread: the workers share the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
