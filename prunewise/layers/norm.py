"""Layers with one parameter (or statistic) per channel: BatchNorm, InstanceNorm, GroupNorm,
LayerNorm and PReLU. Their channels are the channels of their input ("norm"), sliced with it.

GroupNorm prunes whole groups (its units are its groups), so the statistics of the groups that
stay are unchanged and the pruned layer computes exactly what it did. LayerNorm over the
channel dimension (channels-last, as in ConvNeXt) normalises over all channels: pruning is
possible but changes every channel's statistics (the channels are marked mixed).
"""

from __future__ import annotations

from collections.abc import Mapping
from math import prod

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from prunewise.channels.layout import Layout
from prunewise.layers.registry import LayerSpec, QuantRule, register_layer

__all__ = ["group_norm_units", "norm_channels"]


def norm_channels(op, dim: int = 1) -> Layout | None:
    """A per-channel layer along `dim`: records its channels as "norm", passes them on."""
    ids = op.channels(op.arg(0), dim)
    if ids is None:
        return None
    op.record("norm", ids, dim=dim)
    return Layout((dim % len(op.shape(op.arg(0))),), ids)


def group_norm_units(op, ids: np.ndarray, groups: int) -> None:
    """GroupNorm's units are its groups: the channels of each group are tied together."""
    if groups < ids.shape[0]:
        op.state.channels.tie_along(ids.reshape(groups, -1), (1,))


def _index(t: torch.Tensor, keep: np.ndarray, dim: int = 0) -> torch.Tensor:
    return t.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=t.device))


def _slice_tensors(m: nn.Module, keep: np.ndarray, dim: int = 0) -> None:
    """Slice every per-channel parameter and buffer of a copy along `dim`."""
    for name, p in list(m._parameters.items()):
        if p is not None and p.dim() > dim:
            m._parameters[name] = nn.Parameter(_index(p, keep, dim), p.requires_grad)
    for name, b in list(m._buffers.items()):
        if b is not None and b.dim() > dim:
            m._buffers[name] = _index(b, keep, dim)


def _zero_tensors(m: nn.Module, removed: Mapping[str, np.ndarray]) -> None:
    """Zero gamma, beta and the running mean of removed channels: their output becomes 0."""
    rows = removed.get("norm")
    if rows is None or not len(rows):
        return
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor) and t.dim() == 1:
                t[torch.as_tensor(rows, dtype=torch.long, device=t.device)] = 0


def _bn_rule(op, _m: nn.Module) -> Layout | None:
    return norm_channels(op)


def _slice_bn(m: _BatchNorm, keep: Mapping[str, np.ndarray]) -> None:
    _slice_tensors(m, keep["norm"])
    m.num_features = len(keep["norm"])


def _bn_flops(m: nn.Module, inputs: tuple, _outputs: tuple) -> int:
    """fvcore, inference: 1 per element, 2 with the affine scale and shift."""
    return prod(inputs[0]) * (2 if getattr(m, "affine", False) else 1)


def _norm_flops(m: nn.Module, inputs: tuple, _outputs: tuple) -> int:
    """fvcore's group/layer/instance norm counter: 4 per element, 5 with affine."""
    affine = getattr(m, "affine", None)
    if affine is None:
        affine = getattr(m, "elementwise_affine", False)
    return prod(inputs[0]) * (5 if affine else 4)


def _gn_rule(op, m: nn.GroupNorm) -> Layout | None:
    ids = op.channels(op.arg(0), 1)
    if ids is None:
        return None
    group_norm_units(op, ids, m.num_groups)
    op.record("norm", ids)
    return Layout((1,), ids)


def _slice_gn(m: nn.GroupNorm, keep: Mapping[str, np.ndarray]) -> None:
    rows = keep["norm"]
    width = m.num_channels // m.num_groups
    _slice_tensors(m, rows)
    m.num_channels = len(rows)
    m.num_groups = len(rows) // width


def _ln_rule(op, m: nn.LayerNorm) -> Layout | None:
    shape = op.shape(op.arg(0))
    layout = op.layout(op.arg(0))
    if layout is None:
        return None
    first = len(shape) - len(m.normalized_shape)
    inside = [d for d in layout.dims if d >= first]
    if not inside:
        return op.same(op.arg(0))
    if len(m.normalized_shape) != 1:
        return op.unknown(f"{op.what()} normalises over several dimensions with channels")
    ids = norm_channels(op, len(shape) - 1)
    op.mixed(ids.flat(), f"{op.what()} normalises over the channels")
    return ids


def _slice_ln(m: nn.LayerNorm, keep: Mapping[str, np.ndarray]) -> None:
    _slice_tensors(m, keep["norm"])
    m.normalized_shape = (len(keep["norm"]),)


def _in_rule(op, _m: _InstanceNorm) -> Layout | None:
    return norm_channels(op)


def _prelu_rule(op, m: nn.PReLU) -> Layout | None:
    if m.num_parameters == 1:
        return op.same(op.arg(0))
    return norm_channels(op)


def _slice_prelu(m: nn.PReLU, keep: Mapping[str, np.ndarray]) -> None:
    _slice_tensors(m, keep["norm"])
    m.num_parameters = len(keep["norm"])


register_layer(
    _BatchNorm,
    LayerSpec(_bn_rule, _slice_bn, _zero_tensors, _bn_flops, QuantRule.FLOAT, "fold"),
)
register_layer(
    nn.SyncBatchNorm,
    LayerSpec(_bn_rule, _slice_bn, _zero_tensors, _bn_flops, QuantRule.FLOAT, "fold"),
)
register_layer(
    _InstanceNorm,
    LayerSpec(_in_rule, _slice_bn, _zero_tensors, _norm_flops, QuantRule.FLOAT, "cpu"),
)
register_layer(
    nn.GroupNorm,
    LayerSpec(_gn_rule, _slice_gn, _zero_tensors, _norm_flops, QuantRule.FLOAT, "cpu"),
)
register_layer(
    nn.LayerNorm,
    LayerSpec(_ln_rule, _slice_ln, _zero_tensors, _norm_flops, QuantRule.FLOAT, "cpu"),
)
register_layer(
    nn.PReLU,
    LayerSpec(_prelu_rule, _slice_prelu, None, None, QuantRule.FLOAT, "fold"),
)
