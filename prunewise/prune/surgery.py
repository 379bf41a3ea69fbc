"""Surgery: build a physically smaller model that keeps only the planned channels."""

from __future__ import annotations

import copy
import operator

import numpy as np
import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from prunewise.errors import PrunewiseError
from prunewise.graph.groups import ChannelGraph, build_channel_graph
from prunewise.graph.trace import propagate_shapes
from prunewise.prune.plan import PruningPlan

__all__ = ["apply_plan", "kept_positions", "zeroed_copy"]


def kept_positions(graph: ChannelGraph, plan: PruningPlan) -> dict[str, dict[str, np.ndarray]]:
    """Module name -> role -> positions of the channels that stay (only for modules that change)."""
    keeps: dict[int, np.ndarray] = {}
    for decision in plan.decisions:
        if not decision.removed:
            continue
        gi = graph.group_index(decision.group)
        group = graph.groups[gi]
        if group.size != decision.channels:
            raise PrunewiseError(
                f"plan and model disagree on group {group.id}: the plan was made for "
                f"{decision.channels} channels, the model has {group.size}"
            )
        if not group.prunable:
            raise PrunewiseError(f"group {group.id} cannot be pruned: {group.blocked}")
        mask = np.zeros(group.size, dtype=bool)
        mask[list(decision.kept)] = True
        for mi, pos in graph.channels_of(gi):
            m = graph.maps[mi]
            keep = keeps.get(mi)
            if keep is None:
                keep = keeps[mi] = np.ones(m.group.shape[0], dtype=bool)
            keep[pos] = mask[m.index[pos]]
    out: dict[str, dict[str, np.ndarray]] = {}
    for mi in sorted(keeps):
        keep = keeps[mi]
        if not keep.all():
            m = graph.maps[mi]
            out.setdefault(m.module, {})[m.role] = np.nonzero(keep)[0]
    return out


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A shallow copy whose dicts (parameters, buffers, hooks) are its own."""
    new = copy.copy(module)
    attrs = vars(new)
    for key, value in vars(module).items():
        if isinstance(value, dict):
            attrs[key] = type(value)(value)
    return new


def _own_tensors(new: nn.Module, old: nn.Module) -> None:
    """Give `new` its own copy of every parameter and buffer it still shares with `old`."""
    for key, p in new._parameters.items():
        if p is not None and p is old._parameters.get(key):
            new._parameters[key] = nn.Parameter(p.detach().clone(), p.requires_grad)
    for key, b in new._buffers.items():
        if b is not None and b is old._buffers.get(key):
            new._buffers[key] = b.clone()


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    """A parameter holding `t`, a fresh tensor (index_select copies), like `like`."""
    return nn.Parameter(t, requires_grad=like.requires_grad)


def _slice_module(name: str, module: nn.Module, keep: dict[str, np.ndarray]) -> nn.Module:
    new = _fresh_copy(module)
    out_idx = keep.get("out", keep.get("norm", keep.get("depthwise")))
    in_idx = keep.get("in")
    with torch.no_grad():
        if isinstance(module, _ConvNd | nn.Linear):
            w = module.weight
            if out_idx is not None:
                o = torch.as_tensor(out_idx, device=w.device)
                w = w.index_select(0, o)
                if module.bias is not None:
                    new.bias = _param(module.bias.index_select(0, o), module.bias)
            if in_idx is not None:
                w = w.index_select(1, torch.as_tensor(in_idx, device=w.device))
            new.weight = _param(w, module.weight)
            if isinstance(module, nn.Linear):
                new.out_features, new.in_features = int(w.shape[0]), int(w.shape[1])
            elif "depthwise" in keep:
                new.in_channels = new.out_channels = new.groups = int(w.shape[0])
            else:
                new.out_channels, new.in_channels = int(w.shape[0]), int(w.shape[1])
        elif isinstance(module, _BatchNorm) and out_idx is not None:
            o = torch.as_tensor(out_idx)
            for pname in ("weight", "bias"):
                p = getattr(module, pname)
                if p is not None:
                    setattr(new, pname, _param(p.index_select(0, o.to(p.device)), p))
            for bname in ("running_mean", "running_var"):
                b = getattr(module, bname)
                if b is not None:
                    new._buffers[bname] = b.index_select(0, o.to(b.device))
            new.num_features = len(out_idx)
        else:
            raise PrunewiseError(
                f"cannot slice {name} ({type(module).__name__}): no surgery rule for this layer"
            )
        _own_tensors(new, module)
    return new


def apply_plan(
    model: nn.Module | ChannelGraph, plan: PruningPlan, *, verify: bool = True
) -> fx.GraphModule:
    """A new, physically smaller model keeping the plan's channels; the input is not modified.

    `model` is a module (traced here for `plan.input_shape`) or a ChannelGraph already built.
    With `verify`, the shapes of one example are propagated through the result on meta tensors
    (no arithmetic; a real forward pass only if an operation has no meta kernel) to prove that
    every layer fits. `zeroed_copy` gives the exact check of the values.
    """
    graph = (
        model if isinstance(model, ChannelGraph) else build_channel_graph(model, plan.input_shape)
    )
    if tuple(graph.input_shape) != tuple(plan.input_shape):
        raise PrunewiseError(
            f"plan made for input {tuple(plan.input_shape)}, model traced for {graph.input_shape}"
        )
    keep = kept_positions(graph, plan)
    gm = graph.module
    root: dict[str, nn.Module | torch.Tensor] = {}
    for node in gm.graph.nodes:
        target = str(node.target)
        if node.op == "call_module" and target not in root:
            module = gm.get_submodule(target)
            root[target] = (
                _slice_module(target, module, keep[target])
                if target in keep
                else copy.deepcopy(module)
            )
        elif node.op == "get_attr" and target not in root:
            root[target] = copy.deepcopy(operator.attrgetter(target)(gm))
    new_graph = fx.Graph()
    new_graph.output(new_graph.graph_copy(gm.graph, {}))
    new = fx.GraphModule(root, new_graph)
    new.train(gm.training)
    if verify:
        propagate_shapes(new, tuple(plan.input_shape))
    return new


def zeroed_copy(model: nn.Module | ChannelGraph, plan: PruningPlan) -> fx.GraphModule:
    """A same-size copy whose removed channels are zeroed: producer rows, biases, BN gamma/beta.

    Its outputs equal those of `apply_plan(model, plan)` (in eval mode): a check of the surgery.
    """
    graph = (
        model if isinstance(model, ChannelGraph) else build_channel_graph(model, plan.input_shape)
    )
    keep = kept_positions(graph, plan)
    ref = copy.deepcopy(graph.module)
    with torch.no_grad():
        for name, roles in keep.items():
            module = ref.get_submodule(name)
            for role in ("out", "norm", "depthwise"):
                if role not in roles:
                    continue
                n = module.weight.shape[0] if module.weight is not None else module.num_features
                removed = np.setdiff1d(np.arange(n), roles[role])
                for p in (module.weight, module.bias):
                    if p is not None:
                        p[torch.as_tensor(removed, device=p.device)] = 0
    return ref
