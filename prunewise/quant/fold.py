"""BatchNorm folding: merge each BN into the convolution or linear layer that feeds it."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from prunewise.graph.trace import trace

__all__ = ["fold_batchnorm", "unfolded_batchnorms"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _set_module(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def _foldable(gm: fx.GraphModule, bn_node: fx.Node) -> fx.Node | None:
    """The conv/linear node a BN node can be folded into, if any."""
    if not bn_node.args or not isinstance(bn_node.args[0], fx.Node):
        return None
    src = bn_node.args[0]
    layer = _module(gm, src)
    bn = _module(gm, bn_node)
    if len(src.users) != 1 or not isinstance(bn, _BatchNorm) or not bn.track_running_stats:
        return None
    if isinstance(layer, _CONVS):
        return src if layer.out_channels == bn.num_features else None
    if isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
        return src if layer.out_features == bn.num_features else None
    return None


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A copy of `model` in eval mode with every BN that follows a conv/linear folded into it.

    The folded layer computes BN(conv(x)) with the running statistics, so the outputs equal
    the original's in eval mode up to float rounding. BNs that do not directly follow a
    single-use conv or linear stay as they are (see `unfolded_batchnorms`).
    """
    gm = copy.deepcopy(trace(model)).eval()
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        src = _foldable(gm, node)
        if src is None:
            continue
        layer, bn = gm.get_submodule(src.target), gm.get_submodule(node.target)
        with torch.no_grad():
            if isinstance(layer, nn.Linear):
                fused = fuse_linear_bn_eval(layer, bn)
            else:
                fused = fuse_conv_bn_eval(layer, bn)
        _set_module(gm, src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm


def unfolded_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers still in `model` (those folding could not merge)."""
    return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
