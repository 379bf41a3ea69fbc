"""Masks attached while fine-tuning stay enforced, then bake into plain weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.prune.fine import (
    MaskSet,
    attach_masks,
    balanced_mask,
    current_masks,
    global_magnitude_masks,
    magnitude_mask,
    make_permanent,
    pick_layers,
    prunable_weights,
)


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        "0": balanced_mask(model[0].weight, 0.5, group=2),
        "4": magnitude_mask(model[4].weight, 0.8),
    }


def test_pruned_weights_stay_zero_after_optimizer_steps() -> None:
    model = _model()
    masks = _masks(model)
    attach_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(4, 3, 4, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        for name in masks:
            orig = model.get_submodule(name).weight_orig
            orig.grad = torch.ones_like(orig)  # non-zero gradient everywhere, pruned entries too
        opt.step()
    before = model[4].weight_orig.detach().clone()
    model(x)  # the forward pre-hook recomputes weight = weight_orig * mask
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        assert bool((weight[~mask] == 0).all())
        assert bool((weight[mask] != 0).all())
    assert bool((before[~masks["4"]] != 0).any())  # the hidden originals did move


def test_make_permanent_leaves_plain_weights_with_the_zeros() -> None:
    model = _model()
    masks = _masks(model)
    attach_masks(model, masks)
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)
    assert set(current_masks(model)) == {"0", "4"}
    assert make_permanent(model) == ["0", "4"]
    keys = set(model.state_dict())
    assert keys == set(_model().state_dict())
    assert {"0.weight", "4.weight"} <= keys
    assert isinstance(model[0].weight, nn.Parameter)
    for name, mask in masks.items():
        assert bool((model.get_submodule(name).weight[~mask] == 0).all())
    assert torch.equal(model(x), expected)
    assert current_masks(model) == {}
    assert make_permanent(model) == []


def test_attaching_twice_intersects_masks() -> None:
    layer = nn.Linear(4, 2)
    first = torch.tensor([[True, True, False, True], [True, False, True, True]])
    second = torch.tensor([[True, False, True, True], [True, True, True, False]])
    attach_masks(layer, {"": first})
    attach_masks(layer, {"": second})
    assert torch.equal(current_masks(layer)[""], first & second)


def test_global_masks_over_prunable_weights_attach() -> None:
    model = _model()
    weights = prunable_weights(model)
    assert list(weights) == ["0", "4"]
    masks = global_magnitude_masks(weights, 0.6)
    ms = MaskSet(masks)
    ms.attach(model)
    assert MaskSet.from_model(model).total_sparsity() == pytest.approx(ms.total_sparsity())
    total = sum(w.numel() for w in weights.values())
    assert ms.total_sparsity() == pytest.approx(round(0.6 * total) / total)
    assert set(ms.sparsity()) == {"0", "4"}


def test_a_missing_module_is_named() -> None:
    with pytest.raises(PrunewiseError, match="'fc9': the model has no module"):
        attach_masks(_model(), {"fc9": torch.ones(3, 3, dtype=torch.bool)})


def test_a_wrong_shape_names_the_module_and_both_shapes() -> None:
    model = _model()
    bad = {"0": torch.ones(8, 3, 3, 3, dtype=torch.bool), "4": torch.ones(10, 3, dtype=torch.bool)}
    with pytest.raises(PrunewiseError, match=r"'4' has shape \(10, 3\).*shape \(10, 128\)"):
        attach_masks(model, bad)
    assert current_masks(model) == {}  # nothing attached when one mask is wrong


def test_a_non_maskable_module_and_non_binary_mask_are_refused() -> None:
    model = _model()
    with pytest.raises(PrunewiseError, match="'1': it is a BatchNorm2d"):
        attach_masks(model, {"1": torch.ones(8, dtype=torch.bool)})
    with pytest.raises(PrunewiseError, match="only 0/1"):
        attach_masks(model, {"4": torch.full((10, 128), 0.5)})


def test_conv1d_masks_attach() -> None:
    model = nn.Sequential(nn.Conv1d(4, 6, 3))
    mask = balanced_mask(model[0].weight, 0.5, group=4)
    attach_masks(model, {"0": mask})
    assert torch.equal(model[0].weight != 0, mask)


def test_maskset_refuses_non_bool_masks() -> None:
    with pytest.raises(PrunewiseError, match="bool tensor"):
        MaskSet({"a": torch.ones(2, 2)})


class _StandardisedConv(nn.Conv2d):
    """Convolves with (w - mean) / std: a mask on the stored weight leaves it dense."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_a_layer_that_computes_its_weight_is_not_masked() -> None:
    model = nn.Sequential(_StandardisedConv(3, 8, 3), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
    assert set(prunable_weights(model)) == {"2"}  # its sparsity would be a false claim
    assert set(pick_layers(model, ())) == {"2"}
    with pytest.raises(PrunewiseError, match="'0': it is a _StandardisedConv"):
        attach_masks(model, {"0": torch.ones(8, 3, 3, 3, dtype=torch.bool)})
    with pytest.raises(PrunewiseError, match="skip names no prunable layer: \\['0'\\]"):
        pick_layers(model, ("0",))
    with pytest.raises(PrunewiseError, match="no layer whose weight masks can hold"):
        pick_layers(nn.Sequential(_StandardisedConv(3, 8, 3)), ())


class _PlainLinear(nn.Linear):
    """timm's Linear: its own forward, which computes with the stored weight as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def test_a_subclass_that_computes_with_its_own_weight_is_masked() -> None:
    model = nn.Sequential(_StandardisedConv(3, 8, 3), nn.Flatten(), _PlainLinear(32, 10))
    assert set(prunable_weights(model)) == {"2"}
    attach_masks(model, {"2": magnitude_mask(model[2].weight, 0.5)})
    x = torch.randn(2, 3, 4, 4)
    dense = torch.nn.functional.linear(model[1](model[0](x)), model[2].weight, model[2].bias)
    assert torch.equal(model(x), dense) and float((model[2].weight == 0).float().mean()) == 0.5
