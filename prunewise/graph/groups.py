"""Find channel groups: the channels of several layers that must be removed together.

The tracer follows every tensor's channels through the graph (`prunewise.channels.layout`): each
producer opens a space of channels, each operation's rule says where its output's channels
come from (layer types: `prunewise.layers`; functions and methods: `prunewise.graph.functions`)
and ties the channels that must go together. A *group* is a set of spaces whose channels are
tied; its *units* are the sets of tied channels, numbered 0..size-1 (for an untied space, unit
i is channel i). Removing unit i of a group removes its channels from every producer, norm,
depthwise convolution, consumer input and per-channel tensor that carries them; literal sizes
that count them (a view, a split) are rewritten. Channels that reach the model's input or
output, or an operation without a rule, are blocked (never pruned).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from torch import fx, nn

from prunewise.channels.layout import Layout, distinct
from prunewise.channels.ops import Op, Patch, TracerState, tensor_view
from prunewise.channels.sizes import Count
from prunewise.errors import PrunewiseError
from prunewise.given import tied_names
from prunewise.graph.functions import function_rule
from prunewise.graph.trace import node_shape, propagate_shapes, trace
from prunewise.layers.registry import layer_spec

__all__ = ["ChannelGraph", "ChannelGroup", "ChannelMap", "SizePatch", "build_channel_graph"]

ROLES = ("out", "in", "norm", "depthwise", "param", "call")


@dataclass(frozen=True, eq=False)
class ChannelMap:
    """Where each channel of one dimension of one module (or tensor) comes from.

    role: "out" (conv/linear output), "in" (conv/linear input), "norm" (per-channel layer),
    "depthwise" (a depthwise conv, whose outputs are its input's channels), "param" (a tensor
    of the graph, `module` its name, sliced along `dim`), "call" (the input of a function that
    stands for a layer, F.conv2d or F.linear, `module` the node's name: its input sparsity is
    measured; its tensors are "param" maps). group[i] is the index of the group
    that channel i belongs to, index[i] its unit there. For "in", `dim` is the dimension of
    the layer's input that carries the channels. `kind` says what a "param" tensor is to an
    importance ("gamma": a norm's scale; "out": a producer's weights).
    """

    module: str
    role: str
    group: np.ndarray
    index: np.ndarray
    dim: int = 1
    kind: str = ""


@dataclass(frozen=True, eq=False)
class SizePatch:
    """A literal size in the graph that counts channels (see prunewise.channels.ops.Patch), with
    its channels given as (group, unit) per position; `bounds`: a split's cumulative part
    sizes, or a slice's (start, stop) where the forward computes them."""

    node: str
    kind: str
    path: tuple[Any, ...]
    group: np.ndarray
    index: np.ndarray
    bounds: tuple[int, ...] = ()
    dim: int = 1


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together, and every layer they touch.

    `tied`: a residual addition (or subtraction) of feature maps ties the channels of several
    producers; paper A leaves such groups whole unless they are pruned jointly (docs/method.md).
    Other ties (a squeeze-excitation gate, a module called twice) are pruned like any group.
    `mixed` names an operation that combines the group's channels (a LayerNorm over them, a
    mean over channels): such a group can be pruned, but the layers after it see other
    statistics, so the pruned model differs from the original with those channels zeroed.
    """

    id: str
    size: int
    producers: tuple[str, ...]
    norms: tuple[str, ...]
    consumers: tuple[str, ...]
    depthwise: tuple[str, ...]
    tied: bool
    blocked: str | None
    mixed: str | None = None
    params: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        """True when nothing outside the model's own layers depends on these channels."""
        return self.blocked is None and bool(self.producers) and self.size > 1


@dataclass(frozen=True, eq=False)
class ChannelGraph:
    """A traced model with its channel groups, channel maps and size patches."""

    module: fx.GraphModule
    input_shape: tuple[int, ...]
    groups: tuple[ChannelGroup, ...]
    maps: tuple[ChannelMap, ...]
    patches: tuple[SizePatch, ...] = ()
    node_channels: dict[str, np.ndarray] = field(default_factory=dict)
    channel_group: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def groups_at(self, node: str) -> np.ndarray | None:
        """Group number (position in `groups`) of every channel a node's output carries
        (flattened, with repeats), or None for a node whose output has no tracked channels."""
        ids = self.node_channels.get(node)
        return None if ids is None else self.channel_group[ids]

    @cached_property
    def _index_of(self) -> dict[str, int]:
        """Group id -> position in `groups`."""
        return {g.id: i for i, g in enumerate(self.groups)}

    @cached_property
    def _positions(self) -> tuple[tuple[tuple[int, np.ndarray], ...], ...]:
        """Per group: (map number, positions of that map's channels in the group), map order."""
        found: list[list[tuple[int, np.ndarray]]] = [[] for _ in self.groups]
        for mi, m in enumerate(self.maps):
            for gi, pos in _split_by_group(m.group):
                found[gi].append((mi, pos))
        return tuple(tuple(f) for f in found)

    def group(self, group_id: str) -> ChannelGroup:
        """The group with this id (its first producing layer's name)."""
        return self.groups[self.group_index(group_id)]

    def group_index(self, group_id: str) -> int:
        """Position of a group in `groups`."""
        index = self._index_of.get(group_id)
        if index is None:
            raise PrunewiseError(f"no channel group {group_id!r} in this model")
        return index

    def maps_of(self, group_id: str, role: str) -> Iterator[tuple[ChannelMap, np.ndarray]]:
        """(map, positions of the map's channels that belong to the group) for one role."""
        for mi, pos in self.channels_of(self.group_index(group_id)):
            if self.maps[mi].role == role:
                yield self.maps[mi], pos

    def channels_of(self, group_index: int) -> tuple[tuple[int, np.ndarray], ...]:
        """(position in `maps`, positions of that map's channels in the group), in map order."""
        return self._positions[group_index]


def _split_by_group(group: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(group, ascending positions where `group` has that value) for each value present."""
    if group.size == 0:
        return []
    first = int(group[0])
    if group[-1] == first and (group == first).all():
        return [(first, np.arange(group.size))]
    order = np.argsort(group, kind="stable")
    values, starts = np.unique(group[order], return_index=True)
    return [(int(v), p) for v, p in zip(values, np.split(order, starts[1:]), strict=True)]


def _visit(state: TracerState, modules: dict[str, nn.Module], node: fx.Node) -> Any:
    """The layout(s) of one node's output."""
    if node.op == "placeholder":
        shape = node_shape(node)
        if shape is None or len(shape) < 2:
            return None
        ids = state.channels.new_space(shape[1], node.name)
        state.channels.block(ids, "model input")
        return Layout((1,), ids)
    if node.op == "get_attr":
        return None
    if node.op == "output":

        def mark(value: Any) -> Any:
            found = state.layouts.get(value)
            for layout in found if isinstance(found, list) else [found]:
                if isinstance(layout, Layout):
                    state.channels.block(layout.flat(), "model output")
            return value

        fx.node.map_arg(node.args, mark)
        return None
    if node.op == "call_module":
        name = str(node.target)
        module = modules[name]
        op = Op(state, node, name)
        spec = layer_spec(module)
        if spec is None:
            result = op.unknown(f"no channel rule for module {type(module).__name__} {name}")
        else:
            result = spec.channels(op, module)
    else:
        op = Op(state, node, node.name)
        rule = function_rule(node.target, method=node.op == "call_method")
        result = rule(op) if rule is not None else op.unknown()
    _settle_counts(op)
    return result


def _settle_counts(op: Op) -> None:
    """Counts of channels (prunewise.channels.sizes) among an operation's arguments that its
    rule did not check: a number computed from one (c // heads) counts the same channels,
    not exactly; a tensor sized by one keeps them whole."""
    state, node = op.state, op.node
    if not state.counts:
        return
    unchecked = [a for a in node.all_input_nodes if a in state.counts and a not in op.checked]
    if not unchecked or node in state.counts:
        return
    if node.meta.get("tensor_meta") is None:
        state.counts[node] = Count(state.counts[unchecked[0]].ids, exact=False)
        return
    for arg in unchecked:
        op.block(
            state.counts[arg].ids, f"{op.what()} sizes a tensor by {arg.name}, a count of them"
        )


def _space_groups(state: TracerState, roots: np.ndarray) -> np.ndarray:
    """Group number of every space: spaces whose channels are tied are one group."""
    channels = state.channels
    n = len(channels.sizes)
    parent = np.arange(n)

    def find(s: int) -> int:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    space = channels.space_of
    crossing = np.nonzero(space != space[roots])[0]
    keys = np.unique(space[crossing] * n + space[roots[crossing]])
    for a, b in zip((keys // n).tolist(), (keys % n).tolist(), strict=True):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    tops = np.array([find(s) for s in range(n)], dtype=np.int64)
    _, number = np.unique(tops, return_inverse=True)
    return number


def _sharing(gm: fx.GraphModule) -> dict[str, tuple[str, ...]]:
    """Layer name -> the other layers holding one of its parameters (tied weights)."""
    shares: dict[str, set[str]] = {}
    for group in tied_names(gm):
        layers = {name.rpartition(".")[0] for name in group}
        for layer in layers:
            shares.setdefault(layer, set()).update(layers - {layer})
    return {name: tuple(sorted(others)) for name, others in shares.items() if others}


def build_channel_graph(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """Trace `model` and find its channel groups for inputs of shape `input_shape` (C, H, W)."""
    gm = trace(model, input_shape=tuple(input_shape))
    propagate_shapes(gm, tuple(input_shape))
    state = TracerState(shares=_sharing(gm))
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        state.layouts[node] = _visit(state, modules, node)
        view = tensor_view(state, node)
        if view is not None:
            state.views[node] = view
    return _assemble(gm, tuple(input_shape), state)


def _assemble(gm: fx.GraphModule, input_shape: tuple[int, ...], state: TracerState) -> ChannelGraph:
    channels = state.channels
    roots = channels.find(np.arange(channels.count, dtype=np.int64))
    space_group = _space_groups(state, roots)
    group_of = space_group[channels.space_of]  # group number of every channel
    unique_roots = np.nonzero(roots == np.arange(channels.count))[0]
    root_group = group_of[unique_roots]
    order = np.lexsort((unique_roots, root_group))
    sorted_groups = root_group[order]
    starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
    unit_of_root = np.empty(channels.count, dtype=np.int64)
    unit_of_root[unique_roots[order]] = np.arange(order.size) - starts
    unit = unit_of_root[roots]
    sizes = np.bincount(root_group, minlength=int(space_group.max(initial=-1)) + 1)

    def locate(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        return group_of[flat], unit[flat]

    maps = [ChannelMap(name, role, *locate(ids), dim) for name, role, ids, dim in state.records]
    maps += [ChannelMap(t, "param", *locate(ids), d, k) for t, d, ids, k in state.params]
    patches = [_size_patch(p, locate) for p in state.patches]
    nodes = {n.name: v.flat() for n, v in state.layouts.items() if isinstance(v, Layout)}
    return ChannelGraph(
        gm,
        input_shape,
        _groups(state, space_group, sizes, maps),
        tuple(maps),
        tuple(patches),
        nodes,
        group_of,
    )


def _size_patch(p: Patch, locate) -> SizePatch:
    group, index = locate(p.ids)
    bounds = tuple(int(b) for b in np.cumsum([len(part) for part in p.parts])) if p.parts else ()
    return SizePatch(p.node, p.kind, p.path, group, index, p.span or bounds, p.dim)


def _groups(
    state: TracerState, space_group: np.ndarray, sizes: np.ndarray, maps: list[ChannelMap]
) -> tuple[ChannelGroup, ...]:
    channels = state.channels
    count = int(space_group.max(initial=-1)) + 1
    spaces: list[list[int]] = [[] for _ in range(count)]
    for s, g in enumerate(space_group):
        spaces[int(g)].append(s)
    roles: list[dict[str, dict[str, None]]] = [{r: {} for r in ROLES} for _ in range(count)]
    for m in maps:
        for g in distinct(m.group):
            roles[g][m.role].setdefault(m.module)
    taken: set[str] = set()
    groups = []
    for g in range(count):
        members = spaces[g]
        producers = list(
            dict.fromkeys(p for s in members if (p := channels.producers[s]) is not None)
        )
        blocked = [channels.blocked[s] for s in members if s in channels.blocked]
        mixed = [state.mixed[s] for s in members if s in state.mixed]
        name = producers[0] if producers else channels.origins[members[0]]
        while name in taken:
            name = f"{name}'"
        taken.add(name)
        groups.append(
            ChannelGroup(
                id=name,
                size=int(sizes[g]),
                producers=tuple(producers),
                norms=tuple(roles[g]["norm"]),
                consumers=tuple(roles[g]["in"]),
                depthwise=tuple(roles[g]["depthwise"]),
                tied=len(members) > 1 and any(s in state.residual for s in members),
                blocked=blocked[0] if blocked else None,
                mixed="; ".join(dict.fromkeys("; ".join(mixed).split("; "))) if mixed else None,
                params=tuple(roles[g]["param"]),
            )
        )
    return tuple(groups)
