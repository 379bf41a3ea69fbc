"""Weights computed by hooks or parametrizations, made plain before a model is traced or saved.

torch offers several ways to compute a weight from other tensors at each call: pruning masks
(`torch.nn.utils.prune`: `weight_orig` * `weight_mask`), the hook forms of weight and spectral
normalisation, and `torch.nn.utils.parametrize`. A traced graph, a checkpoint's description and
channel surgery see only the module, so such a model is first copied and each of these made
permanent: the weight becomes a plain parameter holding the value the module computes with.
Other hooks on a module are refused by name: a saved model could not keep them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from prunewise.errors import PrunewiseError

__all__ = ["bake_reparametrizations", "check_no_hooks", "has_reparametrizations", "plain_model"]

_HOOK_KINDS = (prune.BasePruningMethod, WeightNorm, SpectralNorm)


def _reparam_hooks(module: nn.Module) -> list[object]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, _HOOK_KINDS)]


def has_reparametrizations(model: nn.Module) -> bool:
    """Whether any module computes a weight through a mask, a norm hook or a parametrization."""
    return any(_reparam_hooks(m) or parametrize.is_parametrized(m) for m in model.modules())


def bake_reparametrizations(model: nn.Module) -> list[str]:
    """Make every mask, weight/spectral norm hook and parametrization permanent, in place.

    Each weight keeps the value the module computes with (masked weights stay zero). Returns
    the names of the modules changed.
    """
    changed = []
    for name, module in model.named_modules():
        hooks = _reparam_hooks(module)
        for hook in hooks:
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
            elif isinstance(hook, WeightNorm):
                nn.utils.remove_weight_norm(module, hook.name)
            else:
                nn.utils.remove_spectral_norm(module, hook.name)
        parametrized = parametrize.is_parametrized(module)
        if parametrized:
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
        if hooks or parametrized:
            changed.append(name)
    return changed


def _unparametrize(module: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Turn a copied parametrized module back into its plain class, holding `values`.

    torch's `remove_parametrizations` would delete the property from the parametrized class,
    which the copy shares with the original: the original would break. The copy switches to
    the plain class instead (the original keeps its own)."""
    grads = {}
    for name in values:
        param = module.parametrizations[name]
        grads[name] = any(p.requires_grad for p in param.parameters(recurse=False))
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value, requires_grad=grads[name]))


def plain_model(model: nn.Module) -> nn.Module:
    """`model` itself when no weight is reparametrized, else a copy with all of them baked.

    `model` is not changed. Each baked tensor holds the value the module computes with now.
    """
    if not has_reparametrizations(model):
        return model
    with torch.no_grad():
        values = {
            name: {t: getattr(m, t).detach().clone() for t in m.parametrizations}
            for name, m in model.named_modules()
            if parametrize.is_parametrized(m)
        }
    # a hook's computed weight is not a graph leaf, which deepcopy refuses: the hook recomputes
    # it when it is removed, so the copy starts without it
    memo: dict[int, object] = {
        id(t): None
        for m in model.modules()
        for t in vars(m).values()
        if isinstance(t, torch.Tensor) and not t.is_leaf
    }
    plain = copy.deepcopy(model, memo)
    for name, tensors in values.items():
        _unparametrize(plain.get_submodule(name), tensors)
    bake_reparametrizations(plain)
    return plain


def check_no_hooks(name: str, module: nn.Module) -> None:
    """Refuse a module with forward hooks: a traced graph, a saved description and a pruned
    model would all silently drop what they do. Raises PrunewiseError naming the module."""
    hooks = {**module._forward_pre_hooks, **module._forward_hooks}
    if hooks:
        first = next(iter(hooks.values()))
        label = getattr(first, "__qualname__", type(first).__name__)
        raise PrunewiseError(
            f"module {name or '(the model)'} has a forward hook ({label}) that a traced, saved "
            "or pruned model cannot keep; remove it (handle.remove()) first, or fold what it "
            "does into the model's forward()"
        )
