"""Find channel groups: the channels of several layers that must be removed together.

Every producer (a convolution or linear layer's output) starts a *channel space*. The tracer
follows each tensor's channel dimension through the graph as a list of segments of spaces:
activations and pooling pass them on, `torch.cat` lays them end to end, flatten expands each
channel to H*W features, and an element-wise operation between two full tensors (a residual
addition, a squeeze-excitation product) ties their spaces into one. A *group* is a set of
tied spaces; removing channel i of a group removes it from every producer, BatchNorm,
depthwise convolution and consumer input that carries it. Spaces that reach the model's input
or output, or pass through an operation with no rule, are blocked (never pruned).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from math import prod

import numpy as np
from torch import fx, nn

from prunewise.errors import PrunewiseError
from prunewise.graph.rules import Rule, rule_for_function, rule_for_module
from prunewise.graph.trace import node_shape, propagate_shapes, trace

__all__ = ["ChannelGraph", "ChannelGroup", "ChannelMap", "build_channel_graph"]

ROLES = ("out", "in", "norm", "depthwise")


@dataclass(frozen=True)
class _Segment:
    space: int
    start: int
    length: int
    expand: int = 1


_Layout = tuple[_Segment, ...]


@dataclass(frozen=True, eq=False)
class ChannelMap:
    """Where each channel of one dimension of one module comes from.

    role: "out" (conv/linear output), "in" (conv/linear input), "norm" (BatchNorm channels),
    "depthwise" (a depthwise conv, whose input and output channels are the same).
    group[i] is the index of the group that channel i belongs to, index[i] its position there.
    """

    module: str
    role: str
    group: np.ndarray
    index: np.ndarray


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together, and every layer they touch."""

    id: str
    size: int
    producers: tuple[str, ...]
    norms: tuple[str, ...]
    consumers: tuple[str, ...]
    depthwise: tuple[str, ...]
    tied: bool
    blocked: str | None

    @property
    def prunable(self) -> bool:
        """True when nothing outside the model's own layers depends on these channels."""
        return self.blocked is None and bool(self.producers)


@dataclass(frozen=True, eq=False)
class ChannelGraph:
    """A traced model with its channel groups and the channel maps of its layers."""

    module: fx.GraphModule
    input_shape: tuple[int, ...]
    groups: tuple[ChannelGroup, ...]
    maps: tuple[ChannelMap, ...]

    @cached_property
    def _index_of(self) -> dict[str, int]:
        """Group id -> position in `groups` (the first group wins, as a linear search would)."""
        index: dict[str, int] = {}
        for i, g in enumerate(self.groups):
            index.setdefault(g.id, i)
        return index

    @cached_property
    def _positions(self) -> tuple[tuple[tuple[int, np.ndarray], ...], ...]:
        """Per group: (map number, positions of that map's channels in the group), map order."""
        found: list[list[tuple[int, np.ndarray]]] = [[] for _ in self.groups]
        for mi, m in enumerate(self.maps):
            for gi, pos in _split_by_group(m.group):
                found[gi].append((mi, pos))
        return tuple(tuple(f) for f in found)

    def group(self, group_id: str) -> ChannelGroup:
        """The group with this id (its first producer's name)."""
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


class _Tracer:
    """One pass over the fx graph, building spaces, ties and channel maps."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.size: list[int] = []
        self.origin: list[str] = []
        self.producer: list[str | None] = []
        self.parent: list[int] = []
        self.blocked: dict[int, str] = {}
        self.layouts: dict[fx.Node, _Layout | None] = {}
        self.records: list[tuple[str, str, _Layout]] = []
        self.calls: dict[str, int] = {}

    def new_space(self, size: int, origin: str, producer: str | None = None) -> _Layout:
        self.size.append(size)
        self.origin.append(origin)
        self.producer.append(producer)
        self.parent.append(len(self.parent))
        return (_Segment(len(self.size) - 1, 0, size),)

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def block(self, layout: _Layout | None, reason: str) -> None:
        for seg in layout or ():
            self.blocked.setdefault(seg.space, reason)

    def fresh_blocked(self, node: fx.Node, reason: str) -> _Layout | None:
        shape = node_shape(node)
        if shape is None or len(shape) < 2:
            return None
        layout = self.new_space(shape[1], node.name)
        self.block(layout, reason)
        return layout

    def whole(self, seg: _Segment) -> bool:
        return seg.start == 0 and seg.length == self.size[seg.space]

    def unify(self, a: _Layout, b: _Layout, reason: str) -> None:
        same = len(a) == len(b) and all(
            x.length == y.length and x.expand == y.expand and self.whole(x) and self.whole(y)
            for x, y in zip(a, b, strict=False)
        )
        if not same:
            if a != b:
                self.block(a, reason)
                self.block(b, reason)
            return
        for x, y in zip(a, b, strict=True):
            rx, ry = self.find(x.space), self.find(y.space)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        out: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
        return [n for n in out if self.layouts.get(n) is not None]

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.layouts[node] = self.visit(node)

    def visit(self, node: fx.Node) -> _Layout | None:
        shape = node_shape(node)
        if node.op == "placeholder":
            return self.fresh_blocked(node, "model input")
        if node.op == "get_attr":
            return self.fresh_blocked(node, f"constant tensor {node.target}")
        if node.op == "output":
            for n in self.tensor_inputs(node):
                self.block(self.layouts[n], "model output")
            return None
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            self.calls[str(node.target)] = self.calls.get(str(node.target), 0) + 1
            return self.visit_module(node, module, rule_for_module(module), shape)
        rule = rule_for_function(node.target, method=node.op == "call_method")
        return self.visit_function(node, rule, shape)

    def first_layout(self, node: fx.Node) -> _Layout | None:
        arg = node.args[0] if node.args else None
        return self.layouts.get(arg) if isinstance(arg, fx.Node) else None

    def unknown(self, node: fx.Node, what: str) -> _Layout | None:
        for n in self.tensor_inputs(node):
            self.block(self.layouts[n], f"no channel rule for {what} ({node.name})")
        return self.fresh_blocked(node, f"output of {what} ({node.name})")

    def visit_module(self, node, module, rule, shape) -> _Layout | None:
        name = str(node.target)
        inp = self.first_layout(node)
        in_shape = node_shape(node.args[0]) if node.args else None
        if rule is Rule.CONV and inp is not None:
            groups, cin, cout = module.groups, module.in_channels, module.out_channels
            if groups == 1:
                self.records.append((name, "in", inp))
                out = self.new_space(cout, name, producer=name)
                self.records.append((name, "out", out))
                return out
            if groups == cin == cout:
                self.records.append((name, "depthwise", inp))
                return inp
            return self.unknown(node, f"grouped convolution {name}")
        if rule is Rule.LINEAR and inp is not None and in_shape is not None and len(in_shape) == 2:
            self.records.append((name, "in", inp))
            out = self.new_space(module.out_features, name, producer=name)
            self.records.append((name, "out", out))
            return out
        if rule is Rule.NORM and inp is not None:
            self.records.append((name, "norm", inp))
            return inp
        if rule in (Rule.PASSTHROUGH, Rule.RESHAPE) and inp is not None:
            return self.reshape(node, inp, shape) if rule is Rule.RESHAPE else inp
        return self.unknown(node, f"module {type(module).__name__} {name}")

    def visit_function(self, node, rule, shape) -> _Layout | None:
        what = f"{node.op} {getattr(node.target, '__name__', node.target)}"
        inputs = self.tensor_inputs(node)
        if rule is Rule.METADATA or (not inputs and rule is not None):
            return None if shape is None or len(shape) < 2 else self.fresh_blocked(node, what)
        if not inputs:
            return self.fresh_blocked(node, what)
        if shape is None or len(shape) < 2:
            return self.unknown(node, what)
        inp = self.first_layout(node)
        in_shape = node_shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if rule is Rule.PASSTHROUGH and inp is not None and in_shape and in_shape[1] == shape[1]:
            return inp
        if rule is Rule.REDUCE and inp is not None and in_shape and in_shape[:2] == shape[:2]:
            return inp
        if rule is Rule.RESHAPE and inp is not None:
            return self.reshape(node, inp, shape)
        if rule is Rule.ELEMENTWISE:
            return self.elementwise(node, inputs, shape, what)
        if rule is Rule.CONCAT:
            return self.concat(node, shape, what)
        return self.unknown(node, what)

    def reshape(self, node: fx.Node, inp: _Layout, shape) -> _Layout | None:
        in_shape = node_shape(node.args[0])
        if in_shape == shape:
            return inp
        flattens = in_shape is not None and len(in_shape) >= 2 and len(shape) == 2
        if flattens and shape[0] == in_shape[0] and shape[1] == prod(in_shape[1:]):
            e = prod(in_shape[2:])
            return tuple(_Segment(s.space, s.start, s.length, s.expand * e) for s in inp)
        return self.unknown(node, f"reshape {node.name}")

    def elementwise(self, node, inputs, shape, what) -> _Layout | None:
        full = []
        for n in inputs:
            s = node_shape(n)
            if s is not None and len(s) == len(shape) and s[1] == shape[1]:
                full.append(self.layouts[n])
            elif s is None or len(s) != len(shape) or s[1] != 1:
                self.block(self.layouts[n], f"broadcast in {what} ({node.name})")
        if not full:
            return self.fresh_blocked(node, what)
        for other in full[1:]:
            self.unify(full[0], other, f"{what} ({node.name}) joins partial groups")
        return full[0]

    def concat(self, node, shape, what) -> _Layout | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        parts = [self.layouts.get(t) if isinstance(t, fx.Node) else None for t in tensors]
        if any(p is None for p in parts):
            return self.unknown(node, what)
        if dim % len(shape) == 1:
            return tuple(seg for p in parts for seg in p)
        for p in parts[1:]:
            self.unify(parts[0], p, f"{what} along dim {dim} ({node.name})")
        return parts[0]


def build_channel_graph(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """Trace `model` and find its channel groups for inputs of shape `input_shape` (C, H, W)."""
    gm = trace(model)
    propagate_shapes(gm, tuple(input_shape))
    t = _Tracer(gm)
    t.run()
    records_of: dict[str, list[_Layout]] = {}
    for name, _, layout in t.records:
        records_of.setdefault(name, []).append(layout)
    for name, count in t.calls.items():
        if count > 1 and any(True for _ in gm.get_submodule(name).parameters(recurse=False)):
            for layout in records_of.get(name, ()):
                t.block(layout, f"module {name} is called {count} times")
    roots = sorted({t.find(s) for s in range(len(t.size))})
    members: dict[int, list[int]] = {r: [] for r in roots}
    for s in range(len(t.size)):
        members[t.find(s)].append(s)
    order = {r: i for i, r in enumerate(roots)}
    maps = []
    by_role: list[dict[str, dict[str, None]]] = [{role: {} for role in ROLES} for _ in roots]
    for name, role, layout in t.records:
        g = np.concatenate([np.full(s.length * s.expand, order[t.find(s.space)]) for s in layout])
        idx = np.concatenate(
            [np.repeat(np.arange(s.start, s.start + s.length), s.expand) for s in layout]
        )
        maps.append(ChannelMap(name, role, g.astype(np.int64), idx.astype(np.int64)))
        for seg in layout:
            if seg.length * seg.expand:
                by_role[order[t.find(seg.space)]][role].setdefault(name)
    groups = []
    for r in roots:
        spaces = members[r]
        roles = by_role[order[r]]
        producers = [t.producer[s] for s in spaces if t.producer[s] is not None]
        reasons = [t.blocked[s] for s in spaces if s in t.blocked]
        groups.append(
            ChannelGroup(
                id=producers[0] if producers else f"{t.origin[spaces[0]]}",
                size=t.size[r],
                producers=tuple(producers),
                norms=tuple(roles["norm"]),
                consumers=tuple(roles["in"]),
                depthwise=tuple(roles["depthwise"]),
                tied=len(spaces) > 1,
                blocked=reasons[0] if reasons else None,
            )
        )
    return ChannelGraph(gm, tuple(input_shape), tuple(groups), tuple(maps))
