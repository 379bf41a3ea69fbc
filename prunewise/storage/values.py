"""Value encodings, orthogonal to the index format: fp32, int8 and a k-means codebook.

Every format stores a list of value slots (the non-zeros, plus filler or padding zeros).
A value encoding stores a table, then one code per slot:

- fp32: no table; 32-bit IEEE-754 codes. Bits = 32 * slots.
- int8: one fp32 scale per output channel (row of the 2-D view), then 8-bit two's-complement
  codes in -127..127; a slot decodes to float32(code * scale[row]).
  Bits = 8 * slots + 32 * rows.
- codebook (q bits): a table of 2^q fp32 entries, then q-bit codes. Entry 0 is always 0.0
  (filler, padding and dense zeros use it); entries 1..2^q-1 are k-means centroids of the
  non-zero values (1-D Lloyd, linearly spaced quantile init, LLOYD_ITERATIONS iterations),
  sorted, unused entries repeating the last centroid. Bits = q * slots + 32 * 2^q.

`quantize_values` gives w', the weight as any format decodes it; encoding w' again gives
w' back bit for bit. For int8, scale = float32(max|w| / 127) is a fixed point of that round
trip; the encoder also tries its float32 neighbours (one ulp either side) and keeps the one
that reproduces the row exactly, so an int8 weight made elsewhere with any float32 scale and
a largest code of +-127 is stored exactly too. A codebook over <= 2^q - 1 distinct non-zero
values uses those values as its centroids, so it is exact.
"""

from __future__ import annotations

import numpy as np

from prunewise.storage.bits import BitReader, BitWriter
from prunewise.storage.spec import Spec
from prunewise.storage.tensor import as_weight, matrix_shape

__all__ = [
    "LLOYD_ITERATIONS",
    "fit_table",
    "kmeans_1d",
    "quantize_values",
    "read_values",
    "value_bits",
    "write_values",
]

LLOYD_ITERATIONS = 30
_INT8_MAX = 127


def value_bits(n_slots: int, rows: int, spec: Spec) -> int:
    """Exact bits of the value part: the table plus one code per slot."""
    if spec.values == "fp32":
        return 32 * n_slots
    if spec.values == "int8":
        return 8 * n_slots + 32 * rows
    return spec.codebook_bits * n_slots + 32 * (1 << spec.codebook_bits)


def _int8_codes(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    q = np.zeros(np.broadcast_shapes(values.shape, scale.shape), dtype=np.float32)
    np.divide(values, scale, out=q, where=scale > 0)
    np.rint(q, out=q)
    np.clip(q, -_INT8_MAX, _INT8_MAX, out=q)
    return q.astype(np.int32)


def _int8_values(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # only a damaged payload's scale can overflow
        return (codes.astype(np.float32) * scale).astype(np.float32)


def _int8_scales(w2d: np.ndarray) -> np.ndarray:
    """Per-row scale max|w| / 127, or the float32 neighbour that reproduces the row exactly."""
    n_rows, n_cols = w2d.shape
    nominal = (np.abs(w2d).max(axis=1) / np.float32(_INT8_MAX)).astype(np.float32)
    candidates = (
        nominal,
        np.nextafter(nominal, np.float32(0)),
        np.nextafter(nominal, np.float32(np.inf)),
    )
    flat = w2d.ravel()
    nz = np.flatnonzero(flat)
    rows, vals = nz // n_cols, flat[nz]  # zeros are exact under any scale
    scale = nominal.copy()
    pending = np.ones(n_rows, dtype=bool)
    for cand in candidates:
        s = cand[rows]
        inexact = np.zeros(n_rows, dtype=bool)
        inexact[rows[_int8_values(_int8_codes(vals, s), s) != vals]] = True
        scale[pending & ~inexact] = cand[pending & ~inexact]
        pending &= inexact
        if not pending.any():
            break
        keep = pending[rows]
        rows, vals = rows[keep], vals[keep]
    return scale


def kmeans_1d(x: np.ndarray, n_clusters: int, iterations: int = LLOYD_ITERATIONS) -> np.ndarray:
    """Sorted float32 centroids (at most n_clusters) of 1-D data by deterministic Lloyd."""
    if x.size == 0 or n_clusters < 1:
        return np.zeros(0, dtype=np.float32)
    xs = np.sort(np.asarray(x, dtype=np.float32).ravel())
    distinct = xs[np.concatenate([[True], xs[1:] != xs[:-1]])]
    if distinct.size <= n_clusters:
        return distinct
    xs64 = xs.astype(np.float64)
    n = xs64.size
    prefix = np.concatenate([[0.0], np.cumsum(xs64)])
    c = xs64[np.round(np.linspace(0, n - 1, n_clusters)).astype(np.int64)]
    for _ in range(iterations):
        mids = (c[1:] + c[:-1]) / 2
        bounds = np.concatenate([[0], np.searchsorted(xs64, mids, side="right"), [n]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        if np.array_equal(new, c):
            break
        c = new
    return np.sort(c.astype(np.float32)) + np.float32(0)


def _codebook_table(w2d: np.ndarray, q: int) -> np.ndarray:
    size = 1 << q
    centroids = kmeans_1d(w2d[w2d != 0], size - 1)
    table = np.zeros(size, dtype=np.float32)
    if centroids.size:
        table[1 : 1 + centroids.size] = centroids
        table[1 + centroids.size :] = centroids[-1]
    return table


def _codebook_codes(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    learned = table[1:].astype(np.float64)
    mids = (learned[1:] + learned[:-1]) / 2
    codes = np.searchsorted(mids, values, side="left").astype(np.uint32) + 1
    codes[values == 0] = 0
    return codes


def fit_table(w2d: np.ndarray, spec: Spec) -> np.ndarray:
    """The table a value encoding stores for this 2-D weight: scales, codebook, or nothing."""
    if spec.values == "int8":
        return _int8_scales(w2d)
    if spec.values == "codebook":
        return _codebook_table(w2d, spec.codebook_bits)
    return np.zeros(0, dtype=np.float32)


def _rows_view(values: np.ndarray, slot_rows: np.ndarray | None, n_rows: int) -> tuple:
    """Values and per-value scale lookup: slot_rows None means values are the full matrix."""
    if slot_rows is None:
        return values.reshape(n_rows, -1), (slice(None), None)
    return values, (slot_rows,)


def encode_values(
    values: np.ndarray, slot_rows: np.ndarray | None, table: np.ndarray, spec: Spec
) -> np.ndarray:
    """One unsigned code per value (same order and shape as `values`)."""
    if spec.values == "fp32":
        return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    if spec.values == "codebook":
        return _codebook_codes(values, table)
    vals, where = _rows_view(values, slot_rows, table.size)
    codes = _int8_codes(vals, table[where])
    return (codes & 0xFF).astype(np.uint32).reshape(values.shape)


def decode_values(
    codes: np.ndarray, slot_rows: np.ndarray | None, table: np.ndarray, spec: Spec
) -> np.ndarray:
    """The float32 values that `encode_values` codes stand for."""
    if spec.values == "fp32":
        return codes.astype(np.uint32).view(np.float32)
    if spec.values == "codebook":
        return table[codes]
    c = codes.astype(np.int32)
    c = np.where(c >= 128, c - 256, c)
    c, where = _rows_view(c, slot_rows, table.size)
    return _int8_values(c, table[where]).reshape(codes.shape)


def _code_width(spec: Spec) -> int:
    return {"fp32": 32, "int8": 8}.get(spec.values, spec.codebook_bits)


def _table_size(n_rows: int, spec: Spec) -> int:
    return {"fp32": 0, "int8": n_rows}.get(spec.values, 1 << spec.codebook_bits)


def write_values(
    writer: BitWriter,
    values: np.ndarray,
    slot_rows: np.ndarray | None,
    table: np.ndarray,
    spec: Spec,
) -> None:
    """Write the table, then one code per value."""
    writer.write(table.view(np.uint32), 32)
    writer.write(encode_values(values, slot_rows, table, spec), _code_width(spec))


def read_values(
    reader: BitReader, n_slots: int, slot_rows: np.ndarray | None, n_rows: int, spec: Spec
) -> np.ndarray:
    """Read what `write_values` wrote and decode it to float32 values."""
    table = reader.read(_table_size(n_rows, spec), 32).view(np.float32)
    codes = reader.read(n_slots, _code_width(spec))
    return decode_values(codes, slot_rows, table, spec)


def quantize_values(weight: np.ndarray, values_spec: Spec) -> np.ndarray:
    """w': the weight with its values as `values_spec.values` stores them (float32, same shape)."""
    w = as_weight(weight)
    w2d = w.reshape(matrix_shape(w.shape))
    table = fit_table(w2d, values_spec)
    codes = encode_values(w2d, None, table, values_spec)
    return decode_values(codes, None, table, values_spec).reshape(w.shape)
