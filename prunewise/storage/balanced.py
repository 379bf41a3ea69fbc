"""Kang's balanced format: every group of g weights holds exactly k slots, no pointers.

The weight (O, I, *K) (a tensor with fewer than 2 dimensions is one row: O = 1, I = numel)
is cut into lines, and every line into groups of g consecutive weights:
- axis "in": one line per (output channel, kernel position), running over the I input
  channels (for a 2-D FC weight: one line per output channel);
- axis "out": one line per (input channel, kernel position), running over the O outputs;
- axis "flat": one line per output channel, running over its flattened I * prod(K) weights.
A line whose length L is not a multiple of g is padded with zeros to ceil(L / g) * g; the
padded positions are storage space like any other (a padded slot holds the value 0), so
groups = lines * ceil(L / g). Each group stores k slots: its non-zeros plus its first
(k - non-zeros) zero positions, in ascending position order, each as an index of
ceil(log2 g) bits (its position in the group) and a value.
Bits = groups * k * ceil(log2 g), slots = groups * k. k is part of the resolved spec.
"""

from __future__ import annotations

import dataclasses
from math import prod

import numpy as np

from prunewise.errors import PrunewiseError
from prunewise.storage.base import Format, Slots
from prunewise.storage.bits import BitReader, BitWriter, width_for
from prunewise.storage.spec import Spec

__all__ = ["Balanced", "OverfullGroupError"]


class OverfullGroupError(PrunewiseError):
    """A group holds more non-zeros than the balanced format's k."""


class _Lines:
    """How the groups of one tensor map onto the weight."""

    def __init__(self, shape: tuple[int, ...], spec: Spec) -> None:
        dims = tuple(shape) if len(shape) >= 2 else (1, prod(shape))
        self.kernel = dims[2:]
        self.out, self.inp, self.ks = dims[0], dims[1], prod(dims[2:])
        self.cols = self.inp * self.ks
        self.axis, self.g = spec.axis, spec.group
        if self.axis == "in":
            self.lines, self.length = self.out * self.ks, self.inp
        elif self.axis == "out":
            self.lines, self.length = self.cols, self.out
        else:
            self.lines, self.length = self.out, self.cols
        self.per_line = -(-self.length // self.g)
        self.groups = self.lines * self.per_line

    def grouped(self, mask: np.ndarray) -> np.ndarray:
        """The mask as (groups, g), lines padded with False."""
        if self.axis == "in":
            view = mask.reshape(self.out, self.inp, self.ks).transpose(0, 2, 1)
        elif self.axis == "out":
            view = mask.reshape(self.out, self.cols).T
        else:
            view = mask.reshape(self.out, self.cols)
        view = view.reshape(self.lines, self.length)
        pad = self.per_line * self.g - self.length
        if pad:
            view = np.pad(view, ((0, 0), (0, pad)))
        return view.reshape(self.groups, self.g)

    def locate(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions (-1 in padding) and output channels of slots, pos = (groups, k)."""
        line, part = np.divmod(np.arange(self.groups, dtype=np.int64), self.per_line)
        first = part * self.g  # where each group starts along its line
        channel = None
        if self.axis == "in":
            base = (line // self.ks) * self.cols + line % self.ks + first * self.ks
            step, channel = self.ks, line // self.ks
        elif self.axis == "out":
            base, step = first * self.cols + line, self.cols
        else:
            base, step, channel = line * self.cols + first, 1, line
        flat = base[:, None] + pos * step
        if self.length % self.g:
            flat = np.where(pos < (self.length - first)[:, None], flat, -1)
        if channel is None:
            out_ch = np.minimum(first[:, None] + pos, self.out - 1).ravel()
        else:
            out_ch = np.repeat(channel, pos.shape[1])
        return flat.ravel(), out_ch

    def describe(self, group: int) -> str:
        """Where group number `group` lies, in words."""
        line, part = divmod(group, self.per_line)
        first = part * self.g
        last = min(first + self.g, self.length) - 1
        span = f"{first}..{last}"
        if self.axis == "flat":
            return f"output channel {line}, flattened weights {span}"
        if self.axis == "in":
            chan, kpos = divmod(line, self.ks)
            where = f"output channel {chan}"
            along = "input channels"
        else:
            chan, kpos = divmod(line, self.ks)
            where = f"input channel {chan}"
            along = "output channels"
        if self.kernel:
            kernel_pos = tuple(int(i) for i in np.unravel_index(kpos, self.kernel))
            where += f", kernel position {kernel_pos}"
        return f"{where}, {along} {span}"


class Balanced(Format):
    """Exactly k slots per group of g, indices of ceil(log2 g) bits."""

    name = "balanced"

    def _resolve(self, mask: np.ndarray, spec: Spec) -> tuple[_Lines, np.ndarray, Spec]:
        lines = _Lines(mask.shape, spec)
        grouped = lines.grouped(mask)
        nnz = np.count_nonzero(grouped, axis=1)
        most = int(nnz.max())
        if spec.k is None:
            return lines, grouped, dataclasses.replace(spec, k=most)
        if most > spec.k:
            over = np.flatnonzero(nnz > spec.k)
            first = int(over[0])
            raise OverfullGroupError(
                f"balanced storage with g={spec.group}, k={spec.k}, axis={spec.axis!r} needs "
                f"at most {spec.k} non-zeros in every group, but {over.size} of "
                f"{lines.groups} groups have more (up to {most}); the first, group {first} "
                f"({lines.describe(first)}), has {int(nnz[first])}; prune with balanced "
                f"pruning at k={spec.k}, or pass k=None to infer k={most}"
            )
        return lines, grouped, spec

    def count(self, mask: np.ndarray, spec: Spec) -> tuple[int, int, Spec]:
        lines, _, spec = self._resolve(mask, spec)
        slots = lines.groups * spec.k
        return slots, slots * width_for(spec.group - 1), spec

    def write(self, mask: np.ndarray, spec: Spec, writer: BitWriter) -> Slots:
        lines, grouped, spec = self._resolve(mask, spec)
        g, k = spec.group, spec.k
        rank_type = np.int16 if g < 1 << 15 else np.int32
        nz_rank = np.cumsum(grouped, axis=1, dtype=rank_type)
        zero_rank = np.arange(1, g + 1, dtype=rank_type) - nz_rank
        keep = grouped | (zero_rank <= k - nz_rank[:, -1:])
        kept = np.flatnonzero(keep)
        pos = (kept & (g - 1) if g & (g - 1) == 0 else kept % g).reshape(lines.groups, k)
        writer.write(pos, width_for(g - 1))
        flat, out_ch = lines.locate(pos)
        return Slots(flat, out_ch, pos.size)

    def read(self, reader: BitReader, shape: tuple[int, ...], spec: Spec) -> Slots:
        if spec.k is None:
            raise PrunewiseError(
                "cannot decode balanced storage without k; the spec of an encoded tensor "
                "always holds k, so the table of contents is damaged"
            )
        lines = _Lines(shape, spec)
        k = spec.k
        pos = reader.read(lines.groups * k, width_for(spec.group - 1)).astype(np.int64)
        by_group = pos.reshape(lines.groups, k)
        if (pos >= spec.group).any() or (np.diff(by_group, axis=1) <= 0).any():
            raise PrunewiseError(
                "balanced payload is damaged: a group's indices are out of range or not "
                "strictly increasing; write it again"
            )
        flat, out_ch = lines.locate(by_group)
        return Slots(flat, out_ch, pos.size)
