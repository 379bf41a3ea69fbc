"""Compensation of removed channels (issue 17): a channel with BatchNorm gamma 0 and beta > 0
sends a constant to the next layer; removing it with compensation leaves the output as it was,
through each way the shift can be folded (a bias, a following BatchNorm, a new bias)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.prune import apply_plan
from prunewise.prune.policy import uniform_plan

SHAPE = (3, 8, 8)


class _Net(nn.Module):
    """conv -> BN -> ReLU -> 1x1 conv (`head_bias`) [-> BN] -> ReLU -> pool -> linear."""

    def __init__(self, *, head_bias: bool, norm: bool) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 1, bias=head_bias)
        self.b2 = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


def _randomize(model: _Net) -> None:
    """Random statistics and affine parameters in every BatchNorm."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.5)


def _silence(norm: nn.Module, beta: list[float]) -> None:
    """Gamma 0 and the given positive beta on the first channels of `norm`."""
    with torch.no_grad():
        norm.weight[: len(beta)] = 0
        norm.bias[: len(beta)] = torch.tensor(beta)


def _outputs(model: nn.Module, images: torch.Tensor, compensate: bool) -> tuple:
    plan = uniform_plan(model, 0.5, input_shape=SHAPE)
    removed = {d.group: d.removed for d in plan.decisions}
    pruned = apply_plan(model, plan, compensate=images if compensate else None).eval()
    with torch.no_grad():
        return model(images), pruned(images), removed, pruned


def test_a_constant_channel_is_removed_without_changing_the_output() -> None:
    torch.manual_seed(0)
    images = torch.randn(16, *SHAPE)
    for head_bias, norm in ((True, True), (False, True), (False, False), (True, False)):
        model = _Net(head_bias=head_bias, norm=norm).eval()
        _randomize(model)
        _silence(model.b1, [0.3, 0.1, 0.5, 0.7])
        if norm:
            _silence(model.b2, [0.2, 0.4, 0.6, 0.1])  # the linear layer's turn
        before, after, removed, pruned = _outputs(model, images, compensate=True)
        assert removed["c1"] == 4, removed  # exactly the silent channels go
        scale = before.abs().max()
        assert (after - before).abs().max() <= 1e-5 * scale, (head_bias, norm)
        _, plain, _, _ = _outputs(model, images, compensate=False)
        assert (plain - before).abs().max() > 0.05 * scale  # without it, the output moves
        if not head_bias and norm:  # folded into the norm: no parameter added
            assert pruned.c2.bias is None
        if not head_bias and not norm:  # no norm to take it: a bias is made
            assert pruned.c2.bias is not None


def test_a_varying_channel_keeps_the_next_layers_mean_output() -> None:
    torch.manual_seed(1)
    images = torch.randn(32, *SHAPE)
    model = _Net(head_bias=True, norm=False).eval()
    plan = uniform_plan(model, 0.5, input_shape=SHAPE)
    taps: dict[str, torch.Tensor] = {}

    def hook(name: str):
        return lambda _m, _a, out: taps.__setitem__(name, out.detach())

    for compensate in (False, True):
        pruned = apply_plan(model, plan, compensate=images if compensate else None).eval()
        handle = model.c2.register_forward_hook(hook("before"))
        pruned.c2.register_forward_hook(hook("after"))
        with torch.no_grad():
            model(images), pruned(images)
        handle.remove()
        shift = (taps["after"] - taps["before"]).mean((0, 2, 3)).abs().max()
        if compensate:  # the least-squares constant: the mean output is kept
            assert shift < 1e-5
        else:
            assert shift > 1e-3


def test_without_images_the_surgery_is_unchanged() -> None:
    torch.manual_seed(2)
    model = _Net(head_bias=False, norm=True).eval()
    plan = uniform_plan(model, 0.5, input_shape=SHAPE)
    a, b = apply_plan(model, plan), apply_plan(model, plan, compensate=None)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_compensation_images_are_checked_as_every_batch_of_images_is() -> None:
    model = _Net(head_bias=False, norm=True).eval()
    plan = uniform_plan(model, 0.5, input_shape=SHAPE)
    nan = torch.randn(4, *SHAPE)
    nan[0, 0, 0, 0] = float("nan")
    cases = ((nan, "NaN"), (torch.randn(4, 3, 16, 16), "size|shape"), ([1.0], "tensor"))
    for images, words in cases:
        with pytest.raises(PrunewiseError, match=f"compensation images.*({words})"):
            apply_plan(model, plan, compensate=images)
