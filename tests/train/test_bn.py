"""BatchNorm re-estimation: plain averages over the loader, nothing else changed, restored after."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunewise.errors import PrunewiseError
from prunewise.train import batchnorms, recalibrate_bn, recalibrated_bn


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Dropout(0.5), nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten()
    )


def _loader(x: torch.Tensor, batch: int) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=batch)


def test_recalibration_is_the_average_of_the_batch_statistics_with_dropout_off() -> None:
    model = _model().eval()
    x = torch.randn(8, 2, 6, 6) * 3 + 1
    bn = model[2]
    bn.running_mean.fill_(7.0)
    assert recalibrate_bn(model, _loader(x, 4)) == 1
    with torch.no_grad():
        y = model[1](x)  # dropout in eval mode is the identity
    halves = (y[:4], y[4:])
    mean = sum(h.mean(dim=(0, 2, 3)) for h in halves) / 2
    var = sum(h.transpose(0, 1).reshape(3, -1).var(dim=1) for h in halves) / 2
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.1 and not model.training and not bn.training


def test_context_restores_the_statistics_bit_for_bit_and_keeps_modes() -> None:
    model = _model().train()
    before = {k: v.clone() for k, v in model[2].named_buffers()}
    weights = [p.clone() for p in model.parameters()]
    with recalibrated_bn(model, _loader(torch.randn(6, 2, 6, 6) + 5, 3)) as inside:
        assert not torch.equal(inside[2].running_mean, before["running_mean"])
    for k, v in model[2].named_buffers():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert all(m.training for m in model.modules())


def test_models_without_batchnorm_and_empty_loaders() -> None:
    plain = nn.Sequential(nn.Conv2d(2, 3, 3))
    assert (
        batchnorms(plain) == [] and recalibrate_bn(plain, _loader(torch.randn(2, 2, 6, 6), 2)) == 0
    )
    with pytest.raises(PrunewiseError, match="empty"):
        recalibrate_bn(_model(), _loader(torch.randn(0, 2, 6, 6), 2))


class _Noisy(torch.utils.data.Dataset):
    """Images with random noise drawn from torch's generator, like random augmentation."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.rand(2, 6, 6) + i, 0


def test_random_augmentation_repeats_under_the_seed_and_the_generator_is_restored() -> None:
    model, loader = _model(), DataLoader(_Noisy(), batch_size=3)
    means = []
    for seed in (0, 0, None):
        state = torch.get_rng_state()
        recalibrate_bn(model, loader, seed=seed)
        means.append(model[2].running_mean.clone())
        if seed is not None:
            assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(means[0], means[1]) and not torch.equal(means[0], means[2])
