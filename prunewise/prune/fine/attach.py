"""Masks kept beside the weights while fine-tuning (torch.nn.utils.prune), then made permanent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from prunewise.errors import PrunewiseError
from prunewise.graph.reparam import bake_reparametrizations
from prunewise.layers import is_leaf_layer, layer_spec
from prunewise.layers.weighted import uses_own_weight

__all__ = [
    "MaskSet",
    "attach_masks",
    "current_masks",
    "make_permanent",
    "maskable",
    "prunable_weights",
]


def maskable(module: nn.Module) -> bool:
    """Whether fine-grained masks may sit on the module's weight (its layer entry says so:
    Conv1d, Conv2d, Linear and what a user registers). A subclass with its own forward is
    only when that forward convolves with its stored weight as it is (timm's Linear); one that
    computes another weight from it (a weight-standardised convolution: a masked weight would
    convolve dense) is not, unless its own class is registered."""
    spec = layer_spec(module)
    if spec is None or not spec.maskable:
        return False
    return is_leaf_layer(module) or uses_own_weight(module)


def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    """Module name -> effective weight of every Conv1d, Conv2d and Linear, in module order."""
    return {n: m.weight.detach() for n, m in model.named_modules() if maskable(m)}


def _pruning_hooks(module: nn.Module) -> list[prune.BasePruningMethod]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def _checked(model: nn.Module, masks: Mapping[str, Tensor]) -> list[tuple[nn.Module, Tensor]]:
    """Validate every mask before any is attached; return (module, bool mask on its device)."""
    modules = dict(model.named_modules())
    checked = []
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None:
            raise PrunewiseError(f"mask for {name!r}: the model has no module of that name")
        if not maskable(module):
            raise PrunewiseError(
                f"mask for {name!r}: it is a {type(module).__name__}; masks apply to the "
                "weights of Conv1d, Conv2d, Linear (and layer types registered as maskable)"
            )
        if not isinstance(mask, Tensor):
            raise PrunewiseError(f"mask for {name!r} must be a tensor, got {type(mask).__name__}")
        weight = module.weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise PrunewiseError(
                f"mask for {name!r} has shape {tuple(mask.shape)} but the module's weight has "
                f"shape {tuple(weight.shape)}"
            )
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise PrunewiseError(f"mask for {name!r} must hold only 0/1 or True/False")
        checked.append((module, mask.detach().to(device=weight.device, dtype=torch.bool)))
    return checked


def attach_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Zero the masked weights and keep them zero while training (in place; returns `model`).

    Keys are module names as in `model.named_modules()`. A module that already carries a mask
    gets the intersection of the old and the new mask (torch's PruningContainer).
    """
    for module, mask in _checked(model, masks):
        prune.custom_from_mask(module, "weight", mask)
    return model


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """Module name -> bool keep-mask of every weight that carries an attached mask."""
    return {
        name: module.weight_mask.detach().bool()
        for name, module in model.named_modules()
        if any(h._tensor_name == "weight" for h in _pruning_hooks(module))
    }


def make_permanent(model: nn.Module) -> list[str]:
    """Bake attached masks into plain weights (zeros stay); return the module names changed."""
    return bake_reparametrizations(model)


@dataclass(frozen=True)
class MaskSet:
    """Keep-masks by module name, validated as bool tensors, with their sparsity."""

    masks: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, mask in self.masks.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise PrunewiseError(f"mask for {name!r} must be a bool tensor")
        object.__setattr__(self, "masks", MappingProxyType(dict(self.masks)))

    @classmethod
    def from_model(cls, model: nn.Module) -> MaskSet:
        """The masks currently attached to `model`."""
        return cls(current_masks(model))

    def attach(self, model: nn.Module) -> nn.Module:
        """Attach these masks to `model` (see `attach_masks`)."""
        return attach_masks(model, self.masks)

    def sparsity(self) -> dict[str, float]:
        """Module name -> fraction of pruned weights."""
        return {n: 1.0 - int(m.count_nonzero()) / max(m.numel(), 1) for n, m in self.masks.items()}

    def total_sparsity(self) -> float:
        """Fraction of pruned weights over all masks together."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.count_nonzero()) for m in self.masks.values())
        return 1.0 - kept / total if total else 0.0
