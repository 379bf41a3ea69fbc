"""Channels as the tracer follows them: numbered channels, their spaces, and their ties.

Every producer (a convolution's or linear layer's output, a model input, a constant) opens a
*space* of numbered channels. A tensor's *layout* says which channels its elements carry
along one or more of its dimensions: `Layout(dims=(1,), ids=[...])` for a plain feature map,
`dims=(3,)` after a permute to channels-last, ids repeated H*W times after a flatten, two
dimensions after a view that splits the channels (a channel shuffle). Operations *tie*
channels position by position (a residual addition ties channel i of one branch to channel i
of the other): tied channels form one *unit*, which is kept or removed as a whole. A *group*
is the set of spaces whose channels are tied, directly or not; its units are what a pruning
plan keeps or removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Channels", "Layout", "distinct"]


def distinct(values: np.ndarray) -> list[int]:
    """The distinct integers of `values`, ascending (np.unique without its cost for the
    common case of a single value)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size and flat[0] == flat[-1] and (flat == flat[0]).all():
        return [int(flat[0])]
    return np.unique(flat).tolist()


@dataclass(frozen=True, eq=False)
class Layout:
    """The channels a tensor carries: `ids[i, j, ...]` is the channel at index i of dimension
    dims[0], j of dims[1], ... (other dimensions carry no tracked channel). dims are sorted."""

    dims: tuple[int, ...]
    ids: np.ndarray

    def __post_init__(self) -> None:
        if self.ids.ndim != len(self.dims):
            raise ValueError(f"layout ids of {self.ids.ndim} dims for dims {self.dims}")

    def flat(self) -> np.ndarray:
        """Every channel id the tensor carries (with repeats), as one array."""
        return self.ids.reshape(-1)


class Channels:
    """Numbered channels in spaces, with a union-find over channels (ties) and blocked spaces."""

    def __init__(self) -> None:
        self.count = 0
        self._parent = np.zeros(1024, dtype=np.int64)
        self._space_of = np.zeros(1024, dtype=np.int64)
        self.starts: list[int] = []
        self.sizes: list[int] = []
        self.origins: list[str] = []
        self.producers: list[str | None] = []
        self.blocked: dict[int, str] = {}

    @property
    def parent(self) -> np.ndarray:
        """Union-find parent of every channel id."""
        return self._parent[: self.count]

    @property
    def space_of(self) -> np.ndarray:
        """The space of every channel id."""
        return self._space_of[: self.count]

    def new_space(self, size: int, origin: str, producer: str | None = None) -> np.ndarray:
        """Open a space of `size` new channels; returns their ids."""
        start, end = self.count, self.count + size
        if end > self._parent.shape[0]:
            capacity = max(end, 2 * self._parent.shape[0])
            self._parent = np.resize(self._parent, capacity)
            self._space_of = np.resize(self._space_of, capacity)
        ids = np.arange(start, end, dtype=np.int64)
        self._parent[start:end] = ids
        self._space_of[start:end] = len(self.sizes)
        self.count = end
        self.starts.append(start)
        self.sizes.append(size)
        self.origins.append(origin)
        self.producers.append(producer)
        return ids

    def find(self, ids: np.ndarray) -> np.ndarray:
        """The root channel (smallest id of its unit) of each id, with path halving."""
        ids = np.asarray(ids, dtype=np.int64)
        parent = self._parent
        up = parent[ids]
        while not (up == ids).all():
            parent[ids] = parent[up]
            ids = parent[ids]
            up = parent[ids]
        return ids

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie channel a[k] to b[k] for every k (arrays of one shape): one unit each."""
        a = np.asarray(a, dtype=np.int64).reshape(-1)
        b = np.asarray(b, dtype=np.int64).reshape(-1)
        while True:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            lo = np.minimum(ra[differ], rb[differ])
            hi = np.maximum(ra[differ], rb[differ])
            self._parent[hi] = lo
            if (self._parent[hi] == lo).all():  # no root was asked to join two others
                return

    def tie_along(self, ids: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        """Tie the channels of `ids` along `axes` (they become one unit per remaining index);
        returns the ids with those axes reduced to their first entry."""
        moved = np.moveaxis(ids, axes, tuple(range(len(axes))))
        rows = moved.reshape(-1, *moved.shape[len(axes) :])
        for k in range(1, rows.shape[0]):
            self.tie(rows[0], rows[k])
        return rows[0]

    def spaces(self, ids: np.ndarray) -> list[int]:
        """The spaces these channels belong to, ascending (one, most of the time)."""
        return distinct(self.space_of[np.asarray(ids, dtype=np.int64).reshape(-1)])

    def block(self, ids: np.ndarray, reason: str) -> None:
        """Mark the spaces of these channels as blocked (their groups are never pruned)."""
        for space in self.spaces(ids):
            self.blocked.setdefault(space, reason)

    def constant_axes(self, ids: np.ndarray) -> tuple[int, ...]:
        """Axes of `ids` along which every entry is in the same unit."""
        roots = self.find(ids.reshape(-1)).reshape(ids.shape)
        return tuple(
            k
            for k in range(ids.ndim)
            if ids.shape[k] > 1 and (roots == roots.take([0], axis=k)).all()
        )
