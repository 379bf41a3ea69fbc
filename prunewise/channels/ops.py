"""What one traced operation does to channels: the view a channel rule gets, and shared rules.

A channel rule is a function `rule(op) -> Layout | list | None` (modules: `rule(op, module)`).
It reads the layouts of its inputs through `op`, opens new channels where it produces them,
records the channel maps of the layer it belongs to, ties channels that must go together, and
returns the layout of its output. The rules here are the ones many operations share: an
element-wise operation (broadcast), a reshape, a reduction, a permutation of dimensions, an
index, a split and a concatenation. Each decides from what the operation does to each
dimension (which dimension it broadcasts, reduces, reshapes, moves or indexes), never from a
coincidence of sizes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import fx

from prunewise.channels.layout import Channels, Layout
from prunewise.channels.sizes import check_count

__all__ = [
    "Op",
    "Patch",
    "TracerState",
    "concat",
    "elementwise",
    "reshape",
    "residual_sum",
    "size_args",
    "split",
    "tensor_view",
]


@dataclass(frozen=True, eq=False)
class Patch:
    """A literal size in the graph that counts channels: surgery rewrites it.

    kind "int": the argument at `path` becomes the number of kept positions of `ids`;
    "slice": a slice on a channel dimension, `ids` the whole dimension (`span`: its start and
    stop as traced, where the forward computes them from sizes); "split": the node
    (split, chunk, tensor_split) becomes torch.split into the kept counts of `parts`.
    """

    node: str
    kind: str
    path: tuple[Any, ...] = ()
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    parts: tuple[np.ndarray, ...] = ()
    dim: int = 1
    span: tuple[int, int] | None = None  # a "slice" whose bounds the forward computes: as traced


@dataclass
class TracerState:
    """What the rules write into: channels, layouts, maps, parameter maps, patches."""

    channels: Channels = field(default_factory=Channels)
    layouts: dict[fx.Node, Any] = field(default_factory=dict)
    records: list[tuple[str, str, np.ndarray, int]] = field(default_factory=list)
    params: list[tuple[str, int, np.ndarray, str]] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)
    mixed: dict[int, str] = field(default_factory=dict)
    residual: set[int] = field(default_factory=set)
    shape_of: dict[fx.Node, tuple[fx.Node, tuple[int, ...]]] = field(default_factory=dict)
    counts: dict[fx.Node, Any] = field(default_factory=dict)
    first_call: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    shapes: dict[fx.Node, tuple[int, ...] | None] = field(default_factory=dict)
    views: dict[fx.Node, tuple[str, tuple[int | None, ...]]] = field(default_factory=dict)
    shares: dict[str, tuple[str, ...]] = field(default_factory=dict)  # layers sharing a weight


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


class Op:
    """One traced operation as a channel rule sees it."""

    def __init__(self, state: TracerState, node: fx.Node, name: str) -> None:
        self.state = state
        self.node = node
        self.name = name
        self.out_shape = self.shape(node)
        self.checked: set[fx.Node] = set()  # counts of channels the rule checked (sizes.py)

    # --- reading ------------------------------------------------------------------------
    def arg(self, index: int, key: str | None = None, default: Any = None) -> Any:
        """Positional argument `index` (or keyword `key`), as written in the graph."""
        if index < len(self.node.args):
            return self.node.args[index]
        return self.node.kwargs.get(key, default) if key is not None else default

    def shape(self, value: Any) -> tuple[int, ...] | None:
        """The shape of a tensor argument (None for anything else)."""
        if not isinstance(value, fx.Node):
            return None
        shapes = self.state.shapes
        if value not in shapes:
            shapes[value] = _shape(value)
        return shapes[value]

    def layout(self, value: Any) -> Layout | None:
        """The layout of a tensor argument (None when it carries no tracked channel)."""
        found = self.state.layouts.get(value) if isinstance(value, fx.Node) else None
        return found if isinstance(found, Layout) else None

    def tensors(self) -> list[fx.Node]:
        """The tensor arguments, in order."""
        found: list[fx.Node] = []
        fx.node.map_arg((self.node.args, self.node.kwargs), lambda n: found.append(n) or n)
        return [n for n in found if self.shape(n) is not None]

    def channels(self, value: Any, dim: int) -> np.ndarray | None:
        """The channel ids along dimension `dim` of a tensor argument, one per index.

        Channels the tensor carries along other dimensions are tied to them (a consumer that
        reads dimension `dim` treats each index of it as one channel); channels only along
        other dimensions are blocked (the consumer uses them as something else)."""
        layout = self.layout(value)
        shape = self.shape(value)
        if layout is None or shape is None:
            return None
        dim = dim % len(shape)
        if dim not in layout.dims:
            self.block(layout.flat(), f"{self.what()} reads them along another dimension")
            return None
        axis = layout.dims.index(dim)
        others = tuple(k for k in range(len(layout.dims)) if k != axis)
        ids = layout.ids
        if others:
            moved = np.moveaxis(ids, axis, -1)
            ids = self.state.channels.tie_along(moved, tuple(range(moved.ndim - 1)))
        return ids

    def what(self) -> str:
        """How messages name this operation."""
        target = self.node.target
        label = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        return f"{label} ({self.node.name})" if self.node.op != "call_module" else self.name

    # --- writing ------------------------------------------------------------------------
    def fresh(self, size: int, *, producer: bool = True) -> np.ndarray:
        """New channels produced here (a new space named after this operation)."""
        return self.state.channels.new_space(size, self.name, self.name if producer else None)

    def record(self, role: str, ids: np.ndarray, dim: int = 1) -> None:
        """A channel map of this layer: its `role` dimension carries channels `ids`.

        A layer called again records the same roles: they are tied to the first call's; so are
        those of layers that share a parameter with it (tied weights stay one tensor)."""
        seen = self.state.first_call.setdefault(self.name, {})
        if role in seen:
            if seen[role].shape == ids.shape:
                self.tie(seen[role], ids)
            else:
                self.block(np.concatenate([seen[role], ids]), f"{self.name} called on other sizes")
            return
        seen[role] = ids
        self.state.records.append((self.name, role, ids, dim))
        for other in self.state.shares.get(self.name, ()):  # one weight: the same channels
            theirs = self.state.first_call.get(other, {}).get(role)
            if theirs is None:
                continue
            if theirs.shape == ids.shape:
                self.tie(theirs, ids)
            else:
                both = np.concatenate([theirs, ids])
                self.block(both, f"{self.name} shares weights with {other}")

    def param(self, target: str, dim: int, ids: np.ndarray, kind: str = "") -> None:
        """A tensor (get_attr `target`) whose dimension `dim` carries channels `ids`; `kind`
        says what it is to an importance: "gamma" (a norm's scale), "out" (a producer's
        weights, one row per output channel)."""
        self.state.params.append((target, dim, ids, kind))

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Channels a[k] and b[k] go together."""
        self.state.channels.tie(a, b)

    def block(self, ids: Any, reason: str) -> None:
        """These channels (ids, a Layout or a tensor argument) are never pruned."""
        if isinstance(ids, fx.Node):
            ids = self.layout(ids)
        if isinstance(ids, Layout):
            ids = ids.flat()
        if ids is not None and np.size(ids):
            self.state.channels.block(ids, reason)

    def block_inputs(self, reason: str) -> None:
        """Block the channels of every tensor argument."""
        for n in self.tensors():
            self.block(n, reason)

    def mixed(self, ids: np.ndarray, reason: str) -> None:
        """These channels are combined across channels (a norm or mean over them): pruning
        changes what the others compute, so the result is not exactly the zeroed model's."""
        for space in self.state.channels.spaces(ids):
            known = self.state.mixed.get(space)
            if known is None or reason not in known.split("; "):
                self.state.mixed[space] = reason if known is None else f"{known}; {reason}"

    def patch(self, patch: Patch) -> None:
        """A literal size surgery must rewrite."""
        self.state.patches.append(patch)

    def make(self, dims: Sequence[int], ids: np.ndarray) -> Layout | None:
        """A layout, without the dimensions along which its channels are all one unit."""
        dims = tuple(dims)
        if not dims:
            return None
        if list(dims) != sorted(dims):
            order = np.argsort(dims)
            ids = np.transpose(ids, order)
            dims = tuple(sorted(dims))
        keep = [k for k in range(len(dims)) if k not in self.state.channels.constant_axes(ids)]
        if len(keep) < len(dims):
            if not keep:
                keep = [0]
            index = tuple(slice(None) if k in keep else 0 for k in range(len(dims)))
            ids = ids[index]
            dims = tuple(dims[k] for k in keep)
        return Layout(dims, np.ascontiguousarray(ids))

    def same(self, value: Any) -> Layout | None:
        """The argument's layout, if this op keeps the size of every tracked dimension."""
        layout, shape = self.layout(value), self.shape(value)
        out = self.out_shape
        if layout is None:
            return None
        if shape is None or out is None or len(shape) != len(out):
            return self.unknown()
        if any(shape[d] != out[d] for d in layout.dims):
            return self.unknown()
        return layout

    def unknown(self, reason: str | None = None) -> None:
        """Block every input's channels (this operation has no channel rule)."""
        self.block_inputs(reason or f"no channel rule for {self.what()}")
        return None

    def fresh_blocked(self, reason: str) -> Layout | None:
        """A new blocked space for this op's output channels (dimension 1), if it has any."""
        out = self.out_shape
        if out is None or len(out) < 2 or out[1] < 2:
            return None
        ids = self.fresh(out[1], producer=False)
        self.state.channels.block(ids, reason)
        return Layout((1,), ids)


# --- shared rules ---------------------------------------------------------------------------


def _aligned(shape: tuple[int, ...], out_ndim: int) -> int:
    return out_ndim - len(shape)


def elementwise(op: Op) -> Layout | None:
    """Inputs broadcast to one output: channels at the same output index are tied; a
    per-channel tensor (a parameter of shape (C, 1, 1), say) is sliced with them."""
    out = op.out_shape
    if out is None:
        return op.unknown()
    ndim = len(out)
    tracked: dict[int, None] = {}
    carried = []
    for n in op.tensors():
        layout, shape = op.layout(n), op.shape(n)
        if layout is None:
            continue
        shift = _aligned(shape, ndim)
        dims = []
        for d in layout.dims:
            if shape[d] != out[d + shift]:  # a tracked dimension of size 1, broadcast
                op.block(layout.flat(), f"{op.what()} broadcasts a single channel")
                break
            dims.append(d + shift)
        else:
            carried.append((dims, layout.ids))
            tracked.update(dict.fromkeys(dims))
    if not carried:
        return op.fresh_blocked(f"output of {op.what()}") if not op.tensors() else None
    union = tuple(sorted(tracked))
    sizes = tuple(out[d] for d in union)
    full = []
    for dims, ids in carried:
        expanded = ids.reshape([ids.shape[dims.index(d)] if d in dims else 1 for d in union])
        full.append(np.broadcast_to(expanded, sizes))
    for other in full[1:]:
        op.tie(full[0], other)
    _untracked_inputs(op, union, full[0], out)
    return op.make(union, np.array(full[0]))


def residual_sum(op: Op) -> Layout | None:
    """An addition or subtraction: element-wise, and when it adds two or more feature maps
    (a residual connection), the spaces it ties are marked as tied by a residual addition
    (paper A leaves such groups whole unless they are pruned jointly)."""
    layout = elementwise(op)
    tracked = [found for n in op.tensors() if (found := op.layout(n)) is not None]
    if layout is not None and len(tracked) > 1:
        for found in tracked:
            op.state.residual.update(op.state.channels.spaces(found.flat()))
    return layout


def _untracked_inputs(op: Op, union: tuple[int, ...], ids: np.ndarray, out: tuple) -> None:
    """Tensors without tracked channels in an element-wise op: a parameter or constant sized
    like the channels is sliced with them; anything else computed at full channel size blocks
    them (surgery could not resize it)."""
    for n in op.tensors():
        if op.layout(n) is not None:
            continue
        shape = op.shape(n)
        shift = _aligned(shape, len(out))
        for axis, d in enumerate(union):
            pd = d - shift
            if pd < 0 or shape[pd] == 1:
                continue
            line = np.moveaxis(ids, axis, 0).reshape(ids.shape[axis], -1)[:, 0]
            view = op.state.views.get(n)
            if view is not None and view[1][pd] is not None:
                op.param(view[0], view[1][pd], line)
            else:
                op.block(line, f"{op.what()} combines them with a computed tensor")


_VIEW_METHODS = frozenset(
    ["view", "reshape", "unsqueeze", "squeeze", "flatten", "expand", "expand_as", "contiguous",
     "to", "float", "double", "half", "type_as", "clone", "detach"]
)  # fmt: skip


def tensor_view(state: TracerState, node: fx.Node) -> tuple[str, tuple[int | None, ...]] | None:
    """Which dimension of which graph tensor (get_attr) each dimension of `node` shows, when
    `node` only reshapes or indexes that tensor (gamma.reshape(1, -1, 1, 1), gamma[:, None])."""
    if node.op == "get_attr":
        shape = _shape(node)
        return None if shape is None else (str(node.target), tuple(range(len(shape))))
    source = node.args[0] if node.args else None
    view = state.views.get(source) if isinstance(source, fx.Node) else None
    target = getattr(node.target, "__name__", node.target)
    if view is None or target not in _VIEW_METHODS | {"getitem", "permute", "transpose"}:
        return None
    before, after = _shape(source), _shape(node)
    if before is None or after is None:
        return None
    if target in ("permute", "transpose"):
        order = list(range(len(before)))
        args = [a for a in node.args[1:] if isinstance(a, int)]
        if target == "transpose" and len(args) == 2:
            order[args[0]], order[args[1]] = order[args[1]], order[args[0]]
        elif target == "permute" and len(args) == len(before):
            order = [a % len(before) for a in args]
        else:
            return None
        return view[0], tuple(view[1][k] for k in order)
    dims: list[int | None] = [None] * len(after)
    for gi, gj in _runs(before, after):
        if len(gi) == 1 and len(gj) == 1 and before[gi[0]] == after[gj[0]]:
            dims[gj[0]] = view[1][gi[0]]
    return view[0], tuple(dims)


def _runs(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dimensions of shapes a and b whose sizes multiply to the same number;
    a dimension of size 1 is a run of its own. Empty when the shapes do not pair up."""
    pairs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            pairs.append(([i], []))
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            pairs.append(([], [j]))
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            return []
        gi, gj, pi, pj = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(a):
                pi, i = pi * a[i], i + 1
                gi.append(i - 1)
            elif pj < pi and j < len(b):
                pj, j = pj * b[j], j + 1
                gj.append(j - 1)
            else:
                return []
        pairs.append((gi, gj))
    return pairs


@dataclass(frozen=True)
class _Sizes:
    """The size arguments of a view / reshape call, and where they sit in the node: size d
    is at `base + (d,)` when they are a tuple argument, at argument `offset + d` when spread."""

    values: list[Any]
    base: tuple[Any, ...] = ()
    offset: int = 0

    def literal(self, d: int) -> bool:
        value = self.values[d] if d < len(self.values) else None
        return isinstance(value, int) and value != -1

    def path(self, d: int) -> tuple[Any, ...]:
        return (*self.base, d) if self.base else (self.offset + d,)


def size_args(op: Op) -> _Sizes | None:
    """The size arguments of a view / reshape / expand call, or None."""
    args = op.node.args
    if len(args) == 2 and isinstance(args[1], tuple | list):
        return _Sizes(list(args[1]), (1,))
    if len(args) >= 2 and op.node.op == "call_method":
        return _Sizes(list(args[1:]), offset=1)
    shape = op.node.kwargs.get("shape")
    if isinstance(shape, tuple | list):
        return _Sizes(list(shape), ("shape",))
    return None


def reshape(op: Op, value: Any = None, *, literal_sizes: bool = True) -> Layout | None:
    """view / reshape / flatten / unflatten: follow each run of dimensions that the reshape
    merges or splits. A merged channel dimension repeats each channel (flatten); a split one
    keeps one axis prunable and ties the channels along the others (see `_tie_split`): a
    channel shuffle's groups, a decoder's H x W.
    Literal sizes at channel dimensions are rewritten by surgery."""
    value = op.arg(0) if value is None else value
    layout, shape, out = op.layout(value), op.shape(value), op.out_shape
    if layout is None:
        return None
    if shape is None or out is None:
        return op.unknown()
    runs = _runs(shape, out)
    if not runs:
        return op.unknown()
    sizes = size_args(op) if literal_sizes else None
    found: list[tuple[list[int], np.ndarray]] = []
    for gi, gj in runs:
        if not any(d in layout.dims for d in gi):
            continue
        if not gj:  # the run is a single dimension of size 1
            continue
        ids = _run_ids(layout, gi, shape).reshape([out[d] for d in gj])
        free = _tie_split(op, ids, gj, sizes) if len(gj) > 1 else 0
        found.append((gj, ids))
        if sizes is not None and sizes.literal(gj[free]) and out[gj[free]] > 1:
            op.patch(Patch(op.node.name, "int", sizes.path(gj[free]), _line(ids, free)))
        for k, d in enumerate(gj):
            if sizes is not None and d < len(sizes.values):
                check_count(op, sizes.values[d], _line(ids, k))
    if len(found) > 1:
        return op.unknown(f"{op.what()} spreads channels over several runs of dimensions")
    return op.make(*found[0]) if found else None


def _line(ids: np.ndarray, axis: int) -> np.ndarray:
    """The ids along one axis (the first entry along the others)."""
    return np.moveaxis(ids, axis, 0).reshape(ids.shape[axis], -1)[:, 0]


def _run_ids(layout: Layout, gi: list[int], shape: Sequence[int]) -> np.ndarray:
    """The channel ids over the input run `gi`, repeated along its untracked dimensions."""
    inner = [d for d in layout.dims if d in gi]
    others = [k for k, d in enumerate(layout.dims) if d not in gi]
    ids = layout.ids
    if others:  # tracked dimensions outside the run: take their first entry
        ids = ids[tuple(0 if k in others else slice(None) for k in range(ids.ndim))]
    view = [shape[d] if d in inner else 1 for d in gi]
    return np.broadcast_to(ids.reshape(view), [shape[d] for d in gi])


def _tie_split(op: Op, ids: np.ndarray, gj: list[int], sizes: _Sizes | None) -> int:
    """Tie the channels along every axis of a split run but the prunable one, and return it:
    an axis whose size is computed or inferred (-1); else, when the run ends the shape (an
    unflatten into C x H x W), the outermost; else (a channel dimension split into groups x
    width, followed by other dimensions) the innermost. Only its size may change."""
    out = op.out_shape
    big = [k for k, d in enumerate(gj) if out[d] > 1]
    computed = [k for k in big if sizes is None or not sizes.literal(gj[k])]
    spatial = gj[-1] == len(out) - 1  # the run ends the shape: an unflatten to (C, H, W)
    literal = big if spatial else big[::-1]
    keep = (computed or literal or [0])[0]
    ties = tuple(k for k in range(len(gj)) if k != keep and ids.shape[k] > 1)
    if ties:
        moved = np.moveaxis(ids, ties, tuple(range(len(ties))))
        op.state.channels.tie_along(moved, tuple(range(len(ties))))
    return keep


def split(op: Op) -> list[Layout | None] | None:
    """split / chunk / tensor_split: parts of the channel dimension become parts of the layout;
    surgery rewrites the sizes (a chunk becomes a split into the kept counts)."""
    value = op.arg(0)
    layout, shape = op.layout(value), op.shape(value)
    metas = op.node.meta.get("tensor_meta")
    if layout is None:
        return None
    dim = op.arg(2, "dim", 0)
    several = isinstance(metas, tuple | list) and not hasattr(metas, "shape")
    if shape is None or not several or not isinstance(dim, int):
        return op.unknown()
    dim %= len(shape)
    pieces = [tuple(int(s) for s in m.shape) for m in metas]
    if dim not in layout.dims:
        return [layout if all(p[d] == shape[d] for d in layout.dims) else None for p in pieces]
    axis = layout.dims.index(dim)
    bounds = np.cumsum([0, *(p[dim] for p in pieces)])
    spans = list(itertools.pairwise(int(b) for b in bounds))
    line = _line(layout.ids, axis)
    op.patch(Patch(op.node.name, "split", (), line, tuple(line[a:b] for a, b in spans), dim))
    return [op.make(layout.dims, np.take(layout.ids, np.arange(a, b), axis=axis)) for a, b in spans]


def concat(op: Op) -> Layout | None:
    """cat along the channel dimension lays the inputs' channels end to end; along any other
    dimension it ties them position by position."""
    tensors = op.arg(0, "tensors")
    dim = op.arg(1, "dim", 0)
    out = op.out_shape
    if not isinstance(tensors, tuple | list) or not isinstance(dim, int) or out is None:
        return op.unknown()
    dim %= len(out)
    layouts = [op.layout(t) for t in tensors]
    if all(lay is None for lay in layouts):
        return None
    if dim in next(lay for lay in layouts if lay is not None).dims:
        parts = []
        for t, lay in zip(tensors, layouts, strict=True):
            s = op.shape(t)
            if lay is None or lay.dims != (dim,):
                ids = op.channels(t, dim) if lay is not None else None
                if ids is None:
                    ids = op.state.channels.new_space(s[dim], f"{op.what()} input", None)
                    op.state.channels.block(ids, f"concatenated with {op.what()}'s constant")
                parts.append(ids)
            else:
                parts.append(lay.ids)
        return op.make((dim,), np.concatenate(parts))
    return elementwise(op)
