"""Surgery: build a physically smaller model that keeps only the planned channels.

Each layer is resized by its entry in the layer registry (`prunewise.layers`); tensors of the
graph that carry channels (a per-channel scale, a functional layer's weight) are sliced along
their channel dimension; literal sizes that count channels (a view's shape, a split's sizes, a
slice's bounds) are rewritten to the kept counts.
"""

from __future__ import annotations

import copy
import itertools
import operator
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from prunewise.errors import PrunewiseError, listing
from prunewise.given import check_images, model_dtype, tied_names
from prunewise.graph.groups import ChannelGraph, SizePatch, build_channel_graph
from prunewise.graph.trace import propagate_shapes
from prunewise.io import tie
from prunewise.layers.registry import require_spec
from prunewise.prune.compensate import apply_compensation, compensation
from prunewise.prune.plan import PruningPlan

__all__ = [
    "apply_plan",
    "inexact_groups",
    "inexact_warning",
    "kept_positions",
    "retie",
    "zeroed_copy",
]


def _role(role: str, dim: int) -> str:
    """The key of a map in `kept_positions`: tensors are keyed by the dimension they slice."""
    return f"param{dim}" if role == "param" else role


def _group_masks(graph: ChannelGraph, plan: PruningPlan) -> dict[int, np.ndarray]:
    """Group index -> bool mask of kept units, for groups the plan changes (checked)."""
    masks: dict[int, np.ndarray] = {}
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
        masks[gi] = mask
    return masks


def _kept(group: np.ndarray, index: np.ndarray, masks: dict[int, np.ndarray]) -> np.ndarray:
    """Bool mask over positions: kept unless their group's unit is removed."""
    keep = np.ones(group.shape[0], dtype=bool)
    for gi, pos in _positions(group, masks):
        keep[pos] = masks[gi][index[pos]]
    return keep


def _positions(group: np.ndarray, masks: dict[int, np.ndarray]):
    for gi in np.unique(group):
        if int(gi) in masks:
            yield int(gi), np.nonzero(group == gi)[0]


def kept_positions(graph: ChannelGraph, plan: PruningPlan) -> dict[str, dict[str, np.ndarray]]:
    """Module (or tensor) name -> role -> positions of the channels that stay, for those that
    change. Tensors of the graph are keyed by role "param<dim>"."""
    masks = _group_masks(graph, plan)
    out: dict[str, dict[str, np.ndarray]] = {}
    for m in graph.maps:
        keep = _kept(m.group, m.index, masks)
        if m.role != "call" and not keep.all():  # a call's tensors are its "param" maps
            out.setdefault(m.module, {})[_role(m.role, m.dim)] = np.nonzero(keep)[0]
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


def _slice_module(name: str, module: nn.Module, keep: dict[str, np.ndarray]) -> nn.Module:
    spec = require_spec(module, name, "resize")
    if spec.slice is None:
        raise PrunewiseError(
            f"cannot resize {name} ({type(module).__name__}): its layer entry has no slicer; "
            "give one in prunewise.layers.register_layer"
        )
    new = _fresh_copy(module)
    with torch.no_grad():
        spec.slice(new, keep)
        _own_tensors(new, module)
    return new


def _slice_tensor(t: torch.Tensor, keep: dict[str, np.ndarray]) -> torch.Tensor:
    out = t.detach()
    for role, positions in keep.items():
        dim = int(role.removeprefix("param"))
        out = out.index_select(dim, torch.as_tensor(positions, dtype=torch.long, device=t.device))
    return (
        nn.Parameter(out.clone(), t.requires_grad) if isinstance(t, nn.Parameter) else out.clone()
    )


def _count(patch: SizePatch, masks: dict[int, np.ndarray]) -> np.ndarray:
    """Per position of the patch: 1 if kept, 0 if removed (cumulated by the callers)."""
    return _kept(patch.group, patch.index, masks).astype(np.int64)


def _set_path(node: fx.Node, path: tuple[Any, ...], value: Any) -> None:
    """Replace the argument of `node` at `path` (indices into args, then into nested tuples)."""
    if path and isinstance(path[0], str):  # a keyword argument ("shape", "groups")
        key, rest = path[0], path[1:]
        new = _replaced(node.kwargs[key], rest, value) if rest else value
        node.kwargs = {**node.kwargs, key: new}
        return
    if not path:
        return
    node.args = _replaced(node.args, path, value)


def _replaced(seq: Any, path: tuple[Any, ...], value: Any) -> Any:
    items = list(seq)
    items[path[0]] = value if len(path) == 1 else _replaced(items[path[0]], path[1:], value)
    return type(seq)(items) if isinstance(seq, tuple) else items


def _get_path(node: fx.Node, path: tuple[Any, ...]) -> Any:
    keyword = bool(path) and isinstance(path[0], str)
    value: Any = node.kwargs[path[0]] if keyword else node.args
    for step in path[1:] if keyword else path:
        value = value[step]
    return value


def _apply_patch(graph: fx.Graph, patch: SizePatch, masks: dict[int, np.ndarray]) -> None:
    node = next(n for n in graph.nodes if n.name == patch.node)
    kept = _count(patch, masks)
    if patch.kind == "int":
        _set_path(node, patch.path, int(kept.sum()))
    elif patch.kind == "slice":
        old = _get_path(node, patch.path)  # bounds computed in the forward become numbers
        start, stop = patch.bounds or old.indices(len(kept))[:2]
        _set_path(node, patch.path, slice(int(kept[:start].sum()), int(kept[:stop].sum()), None))
    elif patch.kind == "split":
        bounds = (0, *patch.bounds)
        sizes = [int(kept[a:b].sum()) for a, b in itertools.pairwise(bounds)]
        if any(s == 0 for s in sizes):
            raise PrunewiseError(f"the plan empties a part of the split {patch.node}")
        node.op, node.target = "call_function", torch.split
        node.args = (node.args[0], sizes, patch.dim)
        node.kwargs = {}


def apply_plan(
    model: nn.Module | ChannelGraph,
    plan: PruningPlan,
    *,
    verify: bool = True,
    compensate: torch.Tensor | None = None,
) -> fx.GraphModule:
    """A new, physically smaller model keeping the plan's channels; the input is not modified.

    `model` is a module (traced here for `plan.input_shape`) or a ChannelGraph already built.
    With `verify`, the shapes of one example are propagated through the result on meta tensors
    (no arithmetic; a real forward pass only if an operation has no meta kernel) to prove that
    every layer fits. `zeroed_copy` gives the exact check of the values. With `compensate`
    (a batch of inputs, N x input shape), the mean output of every removed channel on them is
    folded into the next layer's bias (prunewise.prune.compensate): a channel with BatchNorm
    gamma 0 is then removed without changing the output. Raises PrunewiseError for a plan of
    another input size, and for `compensate` images that are not a finite batch of that size
    (`prunewise.given.check_images`).
    """
    graph = (
        model if isinstance(model, ChannelGraph) else build_channel_graph(model, plan.input_shape)
    )
    if tuple(graph.input_shape) != tuple(plan.input_shape):
        raise PrunewiseError(
            f"plan made for input {tuple(plan.input_shape)}, model traced for {graph.input_shape}"
        )
    keep = kept_positions(graph, plan)
    masks = _group_masks(graph, plan)
    if compensate is not None:
        what = "compensation images"
        dtype = model_dtype(graph.module)
        compensate = check_images(compensate, graph.input_shape, dtype=dtype, what=what)
    shifts = compensation(graph, masks, compensate) if compensate is not None else {}
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
            value = operator.attrgetter(target)(gm)
            root[target] = (
                _slice_tensor(value, keep[target]) if target in keep else copy.deepcopy(value)
            )
    new_graph = fx.Graph()
    new_graph.output(new_graph.graph_copy(gm.graph, {}))
    for patch in graph.patches:
        if any(int(g) in masks for g in np.unique(patch.group)):
            _apply_patch(new_graph, patch, masks)
    new = fx.GraphModule(root, new_graph)
    new.train(gm.training)
    retie(gm, new)
    if shifts:
        kept_out = {n: keep[n]["out"] for n in shifts if "out" in keep.get(n, {})}
        apply_compensation(new, shifts, kept_out)
    if verify:
        propagate_shapes(new, tuple(plan.input_shape), after_surgery=True)
    return new


def retie(source: nn.Module, model: nn.Module) -> None:
    """Make `model`'s parameters one tensor again where `source` holds one tensor under several
    names (tied weights), when the copies are equal (surgery slices them alike: the channel
    graph ties their channels)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for group in tied_names(source):
        first = params.get(group[0])
        if first is None:
            continue
        same = [n for n in group[1:] if n in params and params[n].shape == first.shape]
        same = [n for n in same if torch.equal(params[n].detach(), first.detach())]
        if same:
            tie(model, [group[0], *same])


def zeroed_copy(model: nn.Module | ChannelGraph, plan: PruningPlan) -> fx.GraphModule:
    """A same-size copy whose removed channels are zeroed: producer rows and biases, norm
    parameters, per-channel tensors of the graph.

    Its outputs equal those of `apply_plan(model, plan)` (in eval mode) for every group that is
    not mixed (see ChannelGroup.mixed): the exact check of the surgery.
    """
    graph = (
        model if isinstance(model, ChannelGraph) else build_channel_graph(model, plan.input_shape)
    )
    masks = _group_masks(graph, plan)
    ref = copy.deepcopy(graph.module)
    removed: dict[str, dict[str, np.ndarray]] = {}
    for m in graph.maps:
        gone = ~_kept(m.group, m.index, masks)
        if m.role != "call" and gone.any():
            removed.setdefault(m.module, {})[_role(m.role, m.dim)] = np.nonzero(gone)[0]
    with torch.no_grad():
        for name, roles in removed.items():
            if any(r.startswith("param") for r in roles):
                t = operator.attrgetter(name)(ref)
                for role, positions in roles.items():
                    index = [slice(None)] * t.dim()
                    index[int(role.removeprefix("param"))] = torch.as_tensor(positions)
                    t[tuple(index)] = 0
                continue
            module = ref.get_submodule(name)
            spec = require_spec(module, name, "zero")
            if spec.zero is not None:
                spec.zero(module, roles)
    return ref


def inexact_groups(graph: ChannelGraph, plan: PruningPlan) -> dict[str, str]:
    """Group id -> what mixes its channels (`ChannelGroup.mixed`), for each group the plan
    removes channels of whose channels an operation combines (a norm or mean over them): there
    `apply_plan` is not `zeroed_copy` (the kept channels compute otherwise until fine-tuned)."""
    removed = {d.group for d in plan.decisions if d.removed}
    return {g.id: g.mixed for g in graph.groups if g.id in removed and g.mixed}


def inexact_warning(graph: ChannelGraph, plan: PruningPlan) -> str | None:
    """One line on the plan's `inexact_groups` (None when every pruned group is exact)."""
    found = inexact_groups(graph, plan)
    if not found:
        return None
    why = sorted(set(found.values()))
    return (
        f"{len(found)} pruned group(s) are not exact ({listing(list(found), 4)}): "
        f"{listing(why, 3)}, so the kept channels compute otherwise than in the original "
        "until fine-tuning; the pruned score before fine-tuning reflects it"
    )
