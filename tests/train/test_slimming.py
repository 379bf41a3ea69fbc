"""Network slimming (issue 17): an L1 penalty on BatchNorm gamma during training, as a named
option beside paper A's default (no penalty)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.train import TrainConfig, make_train_loader, slimming_step, train

CONFIG = TrainConfig(epochs=3, lr=0.05, lr_min=1e-3, seed=1, device="cpu", progress=False)


def _gammas(model: nn.Module) -> torch.Tensor:
    return torch.cat(
        [m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    )


def test_the_step_adds_lambda_times_the_sign_of_gamma() -> None:
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -0.2, 0.0, 1.0]))
    bn.weight.grad = torch.ones(4)
    slimming_step(nn.Sequential(bn), 0.1)
    assert torch.allclose(bn.weight.grad, torch.tensor([1.1, 0.9, 1.0, 1.1]))


def test_slimming_drives_gamma_down_and_off_changes_nothing(make_model, make_images) -> None:
    loader = make_train_loader(make_images(96, seed=2), 16, seed=0)
    plain, again, slim = make_model(seed=4), make_model(seed=4), make_model(seed=4)
    train(plain, loader, CONFIG)
    train(again, loader, dataclasses.replace(CONFIG, slimming=0.0))
    train(slim, loader, dataclasses.replace(CONFIG, slimming=0.5))
    assert torch.equal(_gammas(plain), _gammas(again))  # 0 is paper A's training, exactly
    assert _gammas(slim).sum() < 0.8 * _gammas(plain).sum()  # 18 steps of lr ~0.03


def test_the_strength_is_checked() -> None:
    with pytest.raises(PrunewiseError, match=r"train.slimming \(--slimming\) must be a number"):
        TrainConfig(slimming=-0.1)
