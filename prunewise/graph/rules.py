"""How each traced operation moves channels: the rule tables the group finder consults.

A rule names what an operation does to dimension 1 (the channel dimension) of its tensor
inputs. Operations not listed are treated conservatively: every channel they touch becomes
unprunable. `register_channel_rule` adds a function, method name or module type.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Rule", "register_channel_rule", "rule_for_function", "rule_for_module"]


class Rule(Enum):
    """What an operation does to the channels of its inputs."""

    PASSTHROUGH = "passthrough"  # same channels out as in (activation, pooling, dropout)
    ELEMENTWISE = "elementwise"  # ties the channels of all full-size tensor inputs together
    RESHAPE = "reshape"  # flatten / view / reshape: channels expand to features
    CONCAT = "concat"  # torch.cat: channels of the inputs follow one another
    REDUCE = "reduce"  # mean / sum over spatial dimensions: channels kept
    METADATA = "metadata"  # .size(), .shape, .dim(): reads no channel values
    CONV = "conv"  # consumer of its input channels, producer of new ones
    LINEAR = "linear"
    NORM = "norm"  # BatchNorm: channel-wise parameters


def _stochastic_depth() -> Callable | None:
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # torchvision is optional for the rule table
        return None
    return stochastic_depth


_FUNCTIONS: dict[Callable, Rule] = {
    F.relu: Rule.PASSTHROUGH,
    torch.relu: Rule.PASSTHROUGH,
    F.relu6: Rule.PASSTHROUGH,
    F.hardtanh: Rule.PASSTHROUGH,
    F.leaky_relu: Rule.PASSTHROUGH,
    F.elu: Rule.PASSTHROUGH,
    F.gelu: Rule.PASSTHROUGH,
    F.silu: Rule.PASSTHROUGH,
    F.mish: Rule.PASSTHROUGH,
    F.hardswish: Rule.PASSTHROUGH,
    F.hardsigmoid: Rule.PASSTHROUGH,
    F.sigmoid: Rule.PASSTHROUGH,
    torch.sigmoid: Rule.PASSTHROUGH,
    torch.tanh: Rule.PASSTHROUGH,
    F.dropout: Rule.PASSTHROUGH,
    F.dropout2d: Rule.PASSTHROUGH,
    F.max_pool2d: Rule.PASSTHROUGH,
    F.avg_pool2d: Rule.PASSTHROUGH,
    torch._C._nn.avg_pool2d: Rule.PASSTHROUGH,
    F.adaptive_avg_pool2d: Rule.PASSTHROUGH,
    F.adaptive_max_pool2d: Rule.PASSTHROUGH,
    F.interpolate: Rule.PASSTHROUGH,
    torch.clamp: Rule.PASSTHROUGH,
    operator.add: Rule.ELEMENTWISE,
    operator.iadd: Rule.ELEMENTWISE,
    operator.sub: Rule.ELEMENTWISE,
    operator.mul: Rule.ELEMENTWISE,
    operator.imul: Rule.ELEMENTWISE,
    operator.truediv: Rule.ELEMENTWISE,
    torch.add: Rule.ELEMENTWISE,
    torch.sub: Rule.ELEMENTWISE,
    torch.mul: Rule.ELEMENTWISE,
    torch.div: Rule.ELEMENTWISE,
    torch.flatten: Rule.RESHAPE,
    torch.reshape: Rule.RESHAPE,
    torch.cat: Rule.CONCAT,
    torch.concat: Rule.CONCAT,
    torch.mean: Rule.REDUCE,
    torch.sum: Rule.REDUCE,
    torch.amax: Rule.REDUCE,
    builtins.getattr: Rule.METADATA,
}
_sd = _stochastic_depth()
if _sd is not None:
    _FUNCTIONS[_sd] = Rule.PASSTHROUGH

_METHODS: dict[str, Rule] = {
    **dict.fromkeys(
        ["relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "contiguous", "clone", "detach"],
        Rule.PASSTHROUGH,
    ),
    **dict.fromkeys(["add", "add_", "sub", "mul", "mul_", "div"], Rule.ELEMENTWISE),
    **dict.fromkeys(["flatten", "view", "reshape"], Rule.RESHAPE),
    **dict.fromkeys(["mean", "sum", "amax"], Rule.REDUCE),
    **dict.fromkeys(["size", "dim", "numel"], Rule.METADATA),
}

_MODULES: dict[type[nn.Module], Rule] = {
    **dict.fromkeys(
        [
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            nn.ELU,
            nn.GELU,
            nn.SiLU,
            nn.Mish,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.Hardtanh,
            nn.Sigmoid,
            nn.Tanh,
            nn.Identity,
            nn.Dropout,
            nn.Dropout2d,
            nn.AlphaDropout,
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveMaxPool2d,
            nn.Upsample,
        ],
        Rule.PASSTHROUGH,
    ),
    nn.Flatten: Rule.RESHAPE,
    nn.Conv1d: Rule.CONV,
    nn.Conv2d: Rule.CONV,
    nn.Conv3d: Rule.CONV,
    nn.Linear: Rule.LINEAR,
    nn.BatchNorm1d: Rule.NORM,
    nn.BatchNorm2d: Rule.NORM,
    nn.BatchNorm3d: Rule.NORM,
}


def register_channel_rule(key: Callable | str | type[nn.Module], rule: Rule) -> None:
    """Declare how a function, method name or module type treats channels."""
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a prunewise.graph.Rule, got {rule!r}")
    if isinstance(key, str):
        _METHODS[key] = rule
    elif isinstance(key, type) and issubclass(key, nn.Module):
        _MODULES[key] = rule
    elif callable(key):
        _FUNCTIONS[key] = rule
    else:
        raise TypeError(f"cannot register a channel rule for {key!r}")


def rule_for_function(target: Callable | str, *, method: bool) -> Rule | None:
    """The rule of a call_function target or call_method name, or None if unknown."""
    if method:
        return _METHODS.get(str(target))
    return _FUNCTIONS.get(target)  # type: ignore[arg-type]


def rule_for_module(module: nn.Module) -> Rule | None:
    """The rule of a leaf module (exact type first, then its base classes), or None."""
    for cls in type(module).__mro__:
        if cls in _MODULES:
            return _MODULES[cls]
    return None
