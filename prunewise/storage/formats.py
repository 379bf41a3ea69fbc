"""Index formats: dense, csr, csc, bitmap (balanced lives in balanced.py), and their registry.

A format stores the structure of a tensor (which positions hold a value slot) and says,
for each slot, where it goes; the values follow, in slot order, in the value encoding.
Exact index bits, with N = numel, R x C the 2-D view (rows = output channels):

- dense: no index; N slots in row-major order.
- bitmap: N bits (1 = non-zero, row-major), then one slot per non-zero.
- csr (b-bit relative indices): an 8-bit field holding the pointer width w, then R + 1 row
  pointers of w = ceil(log2(E + 1)) bits (E = entries, fillers included; pointer r is the
  first entry of row r, the last one is E), then E indices of b bits. An entry's index is
  the number of zeros skipped since the previous entry of its row (or the row start).
  When more than 2^b - 1 zeros precede a non-zero, filler entries are inserted: a filler has
  index 2^b - 1 and value 0 and stands on the zero after the 2^b - 1 it skips, so a run of z
  zeros before a non-zero costs floor(z / 2^b) fillers. Trailing zeros of a row cost nothing.
  Bits = 8 + (R + 1) * w + E * b, slots = E.
- csc: csr of the transposed view (C units of R positions each: pointers per column of the
  2-D view, indices along the output channels). Bits = 8 + (C + 1) * w + E * b.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from prunewise.errors import PrunewiseError
from prunewise.storage.balanced import Balanced
from prunewise.storage.base import Format, Slots
from prunewise.storage.bits import BitReader, BitWriter, width_for
from prunewise.storage.spec import FORMAT_NAMES, Spec
from prunewise.storage.tensor import matrix_shape

__all__ = ["FORMATS", "Format", "Slots", "csr_entries", "get_format"]

_PTR_FIELD_BITS = 8


class Dense(Format):
    """Every position, row-major."""

    name = "dense"

    def count(self, mask: np.ndarray, spec: Spec) -> tuple[int, int, Spec]:
        return mask.size, 0, spec

    def write(self, mask: np.ndarray, spec: Spec, writer: BitWriter) -> Slots:
        return Slots(None, None, mask.size)

    def read(self, reader: BitReader, shape: tuple[int, ...], spec: Spec) -> Slots:
        rows, cols = matrix_shape(shape)
        return Slots(None, None, rows * cols)


class Bitmap(Format):
    """One bit per position, then the non-zeros."""

    name = "bitmap"

    def count(self, mask: np.ndarray, spec: Spec) -> tuple[int, int, Spec]:
        return int(np.count_nonzero(mask)), mask.size, spec

    def write(self, mask: np.ndarray, spec: Spec, writer: BitWriter) -> Slots:
        writer.write(mask.ravel(), 1)
        positions = np.flatnonzero(mask)
        return Slots(positions, positions // matrix_shape(mask.shape)[1], positions.size)

    def read(self, reader: BitReader, shape: tuple[int, ...], spec: Spec) -> Slots:
        rows, cols = matrix_shape(shape)
        positions = np.flatnonzero(reader.read(rows * cols, 1))
        return Slots(positions, positions // cols, positions.size)


def csr_entries(mask2d: np.ndarray, index_bits: int) -> tuple[np.ndarray, ...]:
    """Per non-zero of a 2-D mask (row-major): flat position, row, zeros skipped, fillers."""
    n_cols = mask2d.shape[1]
    positions = np.flatnonzero(mask2d)
    rows = positions // n_cols
    cols = positions - rows * n_cols
    prev = np.empty_like(cols)
    prev[:1] = -1
    prev[1:] = cols[:-1]
    prev[1:][rows[1:] != rows[:-1]] = -1
    skipped = cols - prev - 1
    return positions, rows, skipped, skipped >> index_bits


class _Compressed(Format, ABC):
    """CSR-style storage over `units` (rows for csr, columns for csc) of the 2-D view."""

    @abstractmethod
    def _units(self, mask2d: np.ndarray) -> np.ndarray:
        """The 2-D mask with one unit per row."""

    @abstractmethod
    def _unit_dims(self, n_rows: int, n_cols: int) -> tuple[int, int]:
        """(units, positions per unit) for a 2-D view of n_rows x n_cols."""

    @abstractmethod
    def _to_flat(self, unit: np.ndarray, pos: np.ndarray, cols: int) -> tuple[np.ndarray, ...]:
        """Flat positions into the weight and output channels of (unit, position in unit)."""

    def count(self, mask: np.ndarray, spec: Spec) -> tuple[int, int, Spec]:
        units = self._units(mask.reshape(matrix_shape(mask.shape)))
        _, _, _, fillers = csr_entries(units, spec.index_bits)
        entries = fillers.size + int(fillers.sum())
        ptr_bits = (units.shape[0] + 1) * width_for(entries)
        return entries, _PTR_FIELD_BITS + ptr_bits + entries * spec.index_bits, spec

    def write(self, mask: np.ndarray, spec: Spec, writer: BitWriter) -> Slots:
        n_rows, n_cols = matrix_shape(mask.shape)
        units = self._units(mask.reshape(n_rows, n_cols))
        b = spec.index_bits
        positions, unit, skipped, fillers = csr_entries(units, b)
        lengths = fillers + 1
        entries = int(lengths.sum())
        nz_slot = np.cumsum(lengths) - 1
        index = np.full(entries, (1 << b) - 1, dtype=np.uint32)
        index[nz_slot] = skipped - (fillers << b)
        entry_unit = np.repeat(unit, lengths)
        counts = np.bincount(entry_unit, minlength=units.shape[0])
        pointers = np.concatenate([[0], np.cumsum(counts)])
        width = width_for(entries)
        writer.write(np.array([width]), _PTR_FIELD_BITS)
        writer.write(pointers, width)
        writer.write(index, b)
        slot_pos = np.full(entries, -1, dtype=np.int64)
        flat, out_ch = self._to_flat(unit, positions - unit * units.shape[1], n_cols)
        slot_pos[nz_slot] = flat
        slot_rows = np.zeros(entries, dtype=np.int64)
        slot_rows[nz_slot] = out_ch
        return Slots(slot_pos, slot_rows, entries)

    def read(self, reader: BitReader, shape: tuple[int, ...], spec: Spec) -> Slots:
        n_rows, n_cols = matrix_shape(shape)
        n_units, unit_len = self._unit_dims(n_rows, n_cols)
        width = int(reader.read(1, _PTR_FIELD_BITS)[0])
        if width > 32:
            raise PrunewiseError(
                f"{self.name} payload is damaged: pointer width {width} > 32; write it again"
            )
        pointers = reader.read(n_units + 1, width).astype(np.int64)
        steps = np.diff(pointers)
        if pointers[0] != 0 or (steps < 0).any() or pointers[-1] > n_units * unit_len:
            raise PrunewiseError(
                f"{self.name} payload is damaged: its row pointers are not a valid "
                "non-decreasing sequence from 0; write it again"
            )
        entries = int(pointers[-1])
        index = reader.read(entries, spec.index_bits).astype(np.int64)
        entry_unit = np.repeat(np.arange(n_units), steps)
        advance = np.cumsum(index + 1)
        start = np.concatenate([[0], advance])[pointers[:-1]]
        pos = advance - start[entry_unit] - 1
        if entries and (pos >= unit_len).any():
            raise PrunewiseError(
                f"{self.name} payload is damaged: an index points past the end of its "
                "row (csr) or column (csc); write it again"
            )
        flat, out_ch = self._to_flat(entry_unit, pos, n_cols)
        return Slots(flat, out_ch, entries)


class CSR(_Compressed):
    """Relative-indexed compressed rows (output channels)."""

    name = "csr"

    def _units(self, mask2d: np.ndarray) -> np.ndarray:
        return mask2d

    def _unit_dims(self, n_rows: int, n_cols: int) -> tuple[int, int]:
        return n_rows, n_cols

    def _to_flat(self, unit: np.ndarray, pos: np.ndarray, cols: int) -> tuple[np.ndarray, ...]:
        return unit * cols + pos, unit


class CSC(_Compressed):
    """Relative-indexed compressed columns (units = columns of the 2-D view)."""

    name = "csc"

    def _units(self, mask2d: np.ndarray) -> np.ndarray:
        return mask2d.T

    def _unit_dims(self, n_rows: int, n_cols: int) -> tuple[int, int]:
        return n_cols, n_rows

    def _to_flat(self, unit: np.ndarray, pos: np.ndarray, cols: int) -> tuple[np.ndarray, ...]:
        return pos * cols + unit, pos


FORMATS: dict[str, Format] = {f.name: f for f in (Dense(), CSR(), CSC(), Bitmap(), Balanced())}
if tuple(FORMATS) != FORMAT_NAMES:  # pragma: no cover - a programming error, caught on import
    raise RuntimeError("spec.FORMAT_NAMES and the format registry disagree")


def get_format(name: str) -> Format:
    """The registered format called `name`; a miss names the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise PrunewiseError(
            f"unknown storage format {name!r}; known formats: {', '.join(FORMATS)}"
        ) from None
