"""Layers a traced graph calls as functions, made modules again.

fx inlines a module whose forward it follows (timm's Conv2dSame pads and calls F.conv2d, its
StdConv2d standardizes its weight and calls F.conv2d with the result, a user's layer calls
F.linear): the graph then holds the layer as a function call on tensors. Everything prunewise
keys by module type (BN folding, INT8 quantization) would miss it, so `modularize` rewrites a
traced copy: a weight computed from stored tensors only (no dependence on the input) is
computed once and stored (`bake_constants`), and an F.conv1d / F.conv2d / F.linear call whose
weight and bias are stored becomes a call of an nn.Conv1d / nn.Conv2d / nn.Linear holding
them. The rewritten graph computes the same outputs (tested to 1e-6 relative).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunewise.graph.trace import call_args

__all__ = ["CONV_ARGS", "bake_constants", "modularize", "stored_tensor", "tidy"]

CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
"""Parameters of F.conv1d / F.conv2d in order (F.linear: the first three)."""
_CONVS: dict[Any, type[nn.Module]] = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d}


def stored_tensor(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    """The tensor a get_attr node of `gm` reads (a parameter or buffer), else None."""
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    owner, _, name = str(node.target).rpartition(".")
    value = getattr(gm.get_submodule(owner) if owner else gm, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def bake_constants(gm: fx.GraphModule) -> int:
    """Compute once, in place, every tensor the graph derives from stored tensors alone (a
    standardized or reshaped weight) and store it as a buffer; returns how many were stored.
    In-place methods are left alone (they would change the stored tensors)."""
    values: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            values[node] = stored_tensor(gm, node)
            continue
        inputs = node.all_input_nodes
        pure = node.op == "call_function" or (
            node.op == "call_method" and not str(node.target).endswith("_")
        )
        if not pure or not inputs or any(values.get(n) is None for n in inputs):
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
        with torch.no_grad():
            if node.op == "call_function":
                values[node] = node.target(*args, **kwargs)
            else:
                values[node] = getattr(args[0], str(node.target))(*args[1:], **kwargs)
    baked = 0
    for node, value in values.items():
        feeds_input_work = any(user not in values for user in node.users)
        if node.op == "get_attr" or not isinstance(value, torch.Tensor) or not feeds_input_work:
            continue
        name = _free_name(gm, f"baked_{node.name}")
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            node.replace_all_uses_with(gm.graph.get_attr(name))
        baked += 1
    for node in reversed(list(values)):  # the computation the buffers replace
        if not node.users and node.op != "get_attr":
            gm.graph.erase_node(node)
    tidy(gm)
    return baked


def _layer(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module an F.conv1d / F.conv2d / F.linear call on stored tensors stands for."""
    if node.op != "call_function" or node.target not in (*_CONVS, F.linear):
        return None
    args = call_args(node, CONV_ARGS)
    weight, bias = stored_tensor(gm, args.get("weight")), args.get("bias")
    if weight is None or (bias is not None and stored_tensor(gm, bias) is None):
        return None
    bias = stored_tensor(gm, bias) if bias is not None else None
    if node.target is F.linear:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        groups = args.get("groups", 1)
        if not isinstance(groups, int):
            return None
        layer = _CONVS[node.target](
            weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
            stride=args.get("stride", 1), padding=args.get("padding", 0),
            dilation=args.get("dilation", 1), groups=groups, bias=bias is not None,
        )  # fmt: skip
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    return layer


def modularize(gm: fx.GraphModule) -> int:
    """Rewrite `gm` in place: computed weights baked (`bake_constants`), then each F.conv1d /
    F.conv2d / F.linear on stored tensors a call of the module it stands for, named after the
    call (conv2d_3, ...). Returns how many calls became modules."""
    bake_constants(gm)
    made = 0
    for node in list(gm.graph.nodes):
        layer = _layer(gm, node)
        if layer is None:
            continue
        name = _free_name(gm, node.name)
        gm.add_submodule(name, layer.train(gm.training))
        x = call_args(node, CONV_ARGS)["input"]
        with gm.graph.inserting_before(node):
            node.replace_all_uses_with(gm.graph.call_module(name, (x,)))
        gm.graph.erase_node(node)
        made += 1
    tidy(gm)
    return made


def tidy(gm: fx.GraphModule) -> None:
    """After a rewrite: drop the stored tensors and modules nothing reads, check the graph and
    regenerate its code."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
