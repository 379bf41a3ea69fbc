"""BatchNorm folding: merge each BN into the convolution or linear layer that feeds it.

A BN is a module (nn.BatchNorm*) or a call of F.batch_norm on the graph's stored tensors with
running statistics, as an inlined module traces (timm's BatchNormAct2d, whose forward calls it
before its activation).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import (
    fuse_conv_bn_eval,
    fuse_conv_bn_weights,
    fuse_linear_bn_eval,
    fuse_linear_bn_weights,
)

from prunewise.graph.modularize import modularize, stored_tensor, tidy
from prunewise.graph.trace import trace

__all__ = ["fold_batchnorm", "unfolded_batchnorms"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _set_module(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


_SHAPE_ATTRS = ("ndim", "shape", "dtype", "device")


def _reads_shape_only(user: fx.Node) -> bool:
    if user.op == "call_method":
        return user.target in ("size", "dim")
    return (
        user.op == "call_function"
        and user.target is getattr
        and len(user.args) > 1
        and user.args[1] in _SHAPE_ATTRS
    )


def _only_user(src: fx.Node, node: fx.Node) -> bool:
    """`node` is the one user of `src` that reads its values (others read only its shape, as
    timm's `_assert(x.ndim == 4)` does), so folding into `src` changes nothing else."""
    return all(user is node or _reads_shape_only(user) for user in src.users)


def _foldable(gm: fx.GraphModule, bn_node: fx.Node) -> fx.Node | None:
    """The conv/linear node a BN module node can be folded into, if any."""
    if not bn_node.args or not isinstance(bn_node.args[0], fx.Node):
        return None
    src = bn_node.args[0]
    layer = _module(gm, src)
    bn = _module(gm, bn_node)
    if not _only_user(src, bn_node) or not isinstance(bn, _BatchNorm) or not bn.track_running_stats:
        return None
    if isinstance(layer, _CONVS):
        return src if layer.out_channels == bn.num_features else None
    if isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
        return src if layer.out_features == bn.num_features else None
    return None


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


def _functional_bn(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, tuple] | None:
    """(the conv/linear node, (mean, var, eps, weight, bias)) of an F.batch_norm call that
    can fold into the single-use layer feeding it: running statistics, stored tensors."""
    if node.op != "call_function" or node.target is not F.batch_norm:
        return None
    args = dict(zip(_BN_ARGS, node.args, strict=False)) | dict(node.kwargs)
    src, eps = args.get("input"), args.get("eps", 1e-5)
    mean = stored_tensor(gm, args.get("running_mean"))
    var = stored_tensor(gm, args.get("running_var"))
    weight, bias = args.get("weight"), args.get("bias")
    layer = _module(gm, src) if isinstance(src, fx.Node) else None
    ok = mean is not None and var is not None and args.get("training", False) is False
    ok = ok and all(v is None or stored_tensor(gm, v) is not None for v in (weight, bias))
    ok = ok and isinstance(layer, (*_CONVS, nn.Linear)) and _only_user(src, node)
    if not ok or not isinstance(eps, float) or mean.numel() != layer.weight.shape[0]:
        return None
    gamma = stored_tensor(gm, weight) if weight is not None else torch.ones_like(mean)
    beta = stored_tensor(gm, bias) if bias is not None else torch.zeros_like(mean)
    return src, (mean, var, eps, gamma, beta)


def _fold_functional(gm: fx.GraphModule, src: fx.Node, stats: tuple) -> None:
    layer = copy.deepcopy(gm.get_submodule(src.target))
    mean, var, eps, gamma, beta = stats
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            w, b = fuse_linear_bn_weights(layer.weight, layer.bias, mean, var, eps, gamma, beta)
        else:
            w, b = fuse_conv_bn_weights(layer.weight, layer.bias, mean, var, eps, gamma, beta)
    layer.weight, layer.bias = w, b
    _set_module(gm, src.target, layer)


def fold_batchnorm(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """A copy of `model` in eval mode with every BN that follows a conv/linear folded into it.

    The folded layer computes BN(conv(x)) with the running statistics, so the outputs equal
    the original's in eval mode up to float rounding. BNs that do not directly follow a
    single-use conv or linear stay as they are (see `unfolded_batchnorms`). `input_shape`
    (C, H, W) lets a forward that branches on spatial sizes trace (timm's "same" padding):
    the copy is then specialised to that size (`prunewise.graph.trace`). Convolutions and
    linear layers the tracer inlined into function calls become modules first
    (`prunewise.graph.modularize`), so their BNs fold and INT8 quantizes them.
    """
    gm = copy.deepcopy(trace(model, input_shape=input_shape)).eval()
    modularize(gm)  # convolutions and linear layers written as function calls, as modules
    for node in list(gm.graph.nodes):
        functional = _functional_bn(gm, node)
        if functional is not None:
            src, stats = functional
            _fold_functional(gm, src, stats)
        elif node.op == "call_module" and (src := _foldable(gm, node)) is not None:
            layer, bn = gm.get_submodule(src.target), gm.get_submodule(node.target)
            with torch.no_grad():
                if isinstance(layer, nn.Linear):
                    fused = fuse_linear_bn_eval(layer, bn)
                else:
                    fused = fuse_conv_bn_eval(layer, bn)
            _set_module(gm, src.target, fused)
        else:
            continue
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    tidy(gm)  # the folded BNs' tensors and modules go
    return gm


def unfolded_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorms still in `model` (those folding could not merge): in a graph
    (what `fold_batchnorm` returns), the BN modules it calls and the owners of the F.batch_norm
    calls it makes; in any other module, its BN modules."""
    if not isinstance(model, fx.GraphModule):
        return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    names = []
    for node in model.graph.nodes:
        if node.op == "call_module" and isinstance(_module(model, node), _BatchNorm):
            names.append(str(node.target))
        elif node.op == "call_function" and node.target is F.batch_norm:
            stats = node.args[1] if len(node.args) > 1 else node.kwargs.get("running_mean")
            owner = str(stats.target).rpartition(".")[0] if isinstance(stats, fx.Node) else ""
            names.append(owner if stats is not None and stats.op == "get_attr" else node.name)
    return names
