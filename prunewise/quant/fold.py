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
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from prunewise.graph.modularize import modularize, stored_tensor, tidy
from prunewise.graph.trace import call_args, trace
from prunewise.layers.weighted import computes_as_layer
from prunewise.quant.qparams import weight_axis

__all__ = ["fold_batchnorm", "unfolded_batchnorms"]

_CONVS = (nn.modules.conv._ConvNd,)  # transposed ones too


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


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


def _bn_stats(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, tuple] | None:
    """(the conv/linear node feeding a BN, (mean, var, eps, gamma, beta)) when the BN can fold
    into it: a BN module with running statistics (a BatchNorm1d after a linear layer), or an
    F.batch_norm call in eval form on stored tensors; the layer's output read by the BN alone
    (`_only_user`) and as wide as the BN."""
    if node.op == "call_module" and isinstance(bn := _module(gm, node), _BatchNorm):
        if not bn.track_running_stats or not node.args:
            return None
        src, linear_ok = node.args[0], isinstance(bn, nn.BatchNorm1d)
        stats = (bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    elif node.op == "call_function" and node.target is F.batch_norm:
        args = call_args(node, _BN_ARGS)
        mean, var, gamma, beta = (stored_tensor(gm, args.get(k)) for k in _BN_ARGS[1:5])
        eps = args.get("eps", 1e-5)
        computed = any(args.get(k) is not None and stored_tensor(gm, args[k]) is None
                       for k in ("weight", "bias"))  # fmt: skip
        if mean is None or var is None or computed or not isinstance(eps, float):
            return None
        if args.get("training", False) is not False:
            return None
        src, linear_ok = args.get("input"), True
        stats = (mean, var, eps, gamma, beta)
    else:
        return None
    layer = _module(gm, src) if isinstance(src, fx.Node) else None
    if not isinstance(layer, (*_CONVS, nn.Linear)) or not _only_user(src, node):
        return None
    if not computes_as_layer(layer):  # a subclass that computes more than its weight and bias
        return None
    if isinstance(layer, nn.Linear) and not linear_ok:
        return None
    axis = weight_axis(layer)  # of the output channels: 1 in a transposed convolution
    if axis == 1 and layer.groups != 1:  # there it is out / groups wide
        return None
    return (src, stats) if stats[0].numel() == layer.weight.shape[axis] else None


def _fold(gm: fx.GraphModule, src: fx.Node, stats: tuple) -> None:
    """Replace the layer called at `src` by a copy with the BN `stats` folded into it."""
    layer = copy.deepcopy(gm.get_submodule(src.target))
    mean, var, eps, gamma, beta = stats
    gamma = gamma if gamma is not None else torch.ones_like(mean)
    beta = beta if beta is not None else torch.zeros_like(mean)
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            fused = fuse_linear_bn_weights(layer.weight, layer.bias, mean, var, eps, gamma, beta)
        else:
            transposed = weight_axis(layer) == 1
            fused = fuse_conv_bn_weights(
                layer.weight, layer.bias, mean, var, eps, gamma, beta, transpose=transposed
            )
        layer.weight, layer.bias = fused
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
        found = _bn_stats(gm, node)
        if found is None:
            continue
        src, stats = found
        _fold(gm, src, stats)
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
            stats = call_args(node, _BN_ARGS).get("running_mean")
            stored = isinstance(stats, fx.Node) and stats.op == "get_attr"
            names.append(str(stats.target).rpartition(".")[0] if stored else node.name)
    return names
