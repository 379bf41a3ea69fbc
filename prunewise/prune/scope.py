"""Prune a part of a larger model in place: a detector's backbone (and FPN), say.

Detection models take lists of images, branch on the data and return boxes: torch.fx cannot
trace them whole. Their backbone can be traced, and pruned like any model, its input and
output channels fixed at the boundary (they are its model input and outputs): `get_scope`
gives the part to pass to build_channel_graph / plans / apply_plan, `replace_scope` puts the
pruned part back into a copy of the whole model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunewise.errors import PrunewiseError, listing
from prunewise.io import load_state

__all__ = ["get_scope", "load_outside", "outside_state", "replace_scope"]


def _children(model: nn.Module) -> str:
    names = [n for n, _ in model.named_children()]
    return listing(names, 8) if names else "none"


def get_scope(model: nn.Module, scope: str) -> nn.Module:
    """The sub-module `scope` names ("backbone", "backbone.body"). Raises PrunewiseError for
    a name the model does not have, listing the children where the lookup stopped."""
    if not isinstance(scope, str) or not scope or scope.startswith(".") or scope.endswith("."):
        raise PrunewiseError(f"a scope is a dotted module name such as 'backbone', got {scope!r}")
    current, path = model, []
    for part in scope.split("."):
        child = current._modules.get(part)
        if child is None:
            where = ".".join(path) or "the model"
            raise PrunewiseError(
                f"{type(model).__name__} has no module {scope!r}: {where} has {_children(current)}"
            )
        current, path = child, [*path, part]
    return current


def replace_scope(model: nn.Module, scope: str, part: nn.Module) -> nn.Module:
    """A copy of `model` whose sub-module `scope` is `part` (the input is not modified)."""
    get_scope(model, scope)  # raises for a wrong name
    parent_name, _, child = scope.rpartition(".")
    result = copy.deepcopy(model)
    parent = get_scope(result, parent_name) if parent_name else result
    parent._modules[child] = part
    return result


def outside_state(model: nn.Module, scope: str) -> dict[str, torch.Tensor]:
    """CPU copies of the state dict entries of `model` outside its sub-module `scope`."""
    prefix = f"{scope}."
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(prefix)}


def load_outside(model: nn.Module, scope: str, state: dict[str, torch.Tensor]) -> list[str]:
    """Load `state` (from `outside_state`) into `model`; returns the keys that do not fit
    (missing outside `scope`, or unexpected), empty when all did."""
    missing, unexpected = load_state(model, state, strict=False)
    return [k for k in missing if not k.startswith(f"{scope}.")] + list(unexpected)
