"""Encode and decode one tensor, count its exact bits, and pick the smallest format.

A payload is the format's index part followed by the value part (table, then one code per
slot), bit-packed with no alignment (see bits.py); it takes ceil(bits / 8) bytes. Decoding
needs the payload plus the shape and the resolved spec (balanced k filled in), which the
file's table of contents holds. Zeros are structural: a stored -0.0 decodes to +0.0.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

import numpy as np

from prunewise.errors import PrunewiseError
from prunewise.storage.balanced import OverfullGroupError
from prunewise.storage.bits import BitReader, BitWriter
from prunewise.storage.formats import get_format
from prunewise.storage.spec import Spec
from prunewise.storage.tensor import as_mask, as_weight, matrix_shape
from prunewise.storage.values import fit_table, read_values, value_bits, write_values

__all__ = [
    "Encoded",
    "best_format",
    "decode",
    "default_candidates",
    "encode",
    "format_bits",
    "format_bytes",
]

_MAGIC = b"PWTENSOR"
_LEN = struct.Struct("<I")


def _bytes(bits: int) -> int:
    return -(-bits // 8)


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor: its shape, resolved spec, exact size in bits, and the payload."""

    shape: tuple[int, ...]
    spec: Spec
    bits: int
    payload: bytes

    @property
    def nbytes(self) -> int:
        """Payload bytes: ceil(bits / 8)."""
        return len(self.payload)

    def to_bytes(self) -> bytes:
        """Self-contained bytes: b"PWTENSOR", a JSON header length (u32 LE), header, payload."""
        header = json.dumps(
            {"shape": list(self.shape), "spec": self.spec.to_dict(), "bits": self.bits}
        ).encode()
        return _MAGIC + _LEN.pack(len(header)) + header + self.payload

    @classmethod
    def from_bytes(cls, data: bytes) -> Encoded:
        """Rebuild what `to_bytes` wrote; refuses anything else with a PrunewiseError."""
        head = len(_MAGIC) + _LEN.size
        if len(data) < head or data[: len(_MAGIC)] != _MAGIC:
            raise PrunewiseError(
                "not an encoded prunewise tensor (no PWTENSOR marker); make it with "
                "Encoded.to_bytes()"
            )
        (size,) = _LEN.unpack_from(data, len(_MAGIC))
        try:
            meta = json.loads(data[head : head + size])
            return cls.checked(
                tuple(meta["shape"]),
                Spec.from_dict(meta["spec"]),
                meta["bits"],
                data[head + size :],
            )
        except (ValueError, KeyError, TypeError, RecursionError, PrunewiseError) as exc:
            raise PrunewiseError(f"encoded tensor is damaged or truncated ({exc})") from exc

    @classmethod
    def checked(cls, shape: tuple[int, ...], spec: Spec, bits: object, payload: bytes) -> Encoded:
        """An Encoded whose fields were read from outside, checked for consistency."""
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise PrunewiseError(f"shape {list(shape)} is not a list of positive ints")
        if not isinstance(bits, int) or isinstance(bits, bool) or bits < 0:
            raise PrunewiseError(f"bit count {bits!r} is not a non-negative int")
        if spec.format == "balanced" and spec.k is None:
            raise PrunewiseError("balanced spec has no k")
        if len(payload) != _bytes(bits):
            raise PrunewiseError(
                f"payload has {len(payload)} bytes but {bits} bits need {_bytes(bits)}"
            )
        return cls(tuple(shape), spec, bits, bytes(payload))


def _count(mask: np.ndarray, spec: Spec) -> tuple[int, Spec]:
    slots, index_bits, resolved = get_format(spec.format).count(mask, spec)
    return index_bits + value_bits(slots, matrix_shape(mask.shape)[0], spec), resolved


def format_bits(mask_or_weight: np.ndarray, spec: Spec) -> int:
    """Exact payload bits of `spec` for this mask (or weight), without building the encoding."""
    return _count(as_mask(mask_or_weight), spec)[0]


def format_bytes(mask_or_weight: np.ndarray, spec: Spec) -> int:
    """Exact payload bytes: ceil(format_bits / 8)."""
    return _bytes(format_bits(mask_or_weight, spec))


def encode(weight: np.ndarray, spec: Spec) -> Encoded:
    """Encode a weight (cast to float32) in `spec`; balanced k=None is inferred."""
    w = as_weight(weight)
    mask = w != 0
    fmt = get_format(spec.format)
    expected, resolved = _count(mask, spec)
    writer = BitWriter()
    slots = fmt.write(mask, resolved, writer)
    flat = w.ravel()
    if slots.positions is None:
        values = flat
    else:
        values = flat[np.maximum(slots.positions, 0)]
        values[slots.positions < 0] = 0
    table = fit_table(w.reshape(matrix_shape(w.shape)), resolved)
    write_values(writer, values, slots.rows, table, resolved)
    if writer.bits != expected:  # pragma: no cover - would be a bug in a format's count
        raise RuntimeError(f"{spec.label}: wrote {writer.bits} bits, counted {expected}")
    return Encoded(tuple(w.shape), resolved, writer.bits, writer.getvalue())


def decode(encoded: Encoded) -> np.ndarray:
    """The float32 weight an Encoded stands for (its original shape)."""
    shape, spec = encoded.shape, encoded.spec
    what = f"{spec.label} payload"
    try:
        reader = BitReader(encoded.payload, what)
        slots = get_format(spec.format).read(reader, shape, spec)
        values = read_values(reader, slots.count, slots.rows, matrix_shape(shape)[0], spec)
        reader.finish()
        if reader.pos != encoded.bits:
            raise PrunewiseError(
                f"{what} is damaged: it holds {reader.pos} bits of content, its header says "
                f"{encoded.bits}; write it again"
            )
        out = np.zeros(prod(shape), dtype=np.float32)
        if slots.positions is None:
            out[:] = values
        else:
            inside = slots.positions >= 0
            if (values[~inside] != 0).any():
                raise PrunewiseError(f"{what} is damaged: a padding slot holds a non-zero")
            out[slots.positions[inside]] = values[inside]
    except (ValueError, IndexError, MemoryError) as exc:
        raise PrunewiseError(f"{what} is damaged ({exc}); write it again") from exc
    return out.reshape(shape)


def default_candidates(values: str = "fp32", codebook_bits: int = 5) -> tuple[Spec, ...]:
    """dense, csr and csc with b = 4 and 8, bitmap, and balanced (g=16, inferred k, "in")."""
    kw = {"values": values, "codebook_bits": codebook_bits}
    return (
        Spec("dense", **kw),
        Spec("csr", index_bits=4, **kw),
        Spec("csr", index_bits=8, **kw),
        Spec("csc", index_bits=4, **kw),
        Spec("csc", index_bits=8, **kw),
        Spec("bitmap", **kw),
        Spec("balanced", group=16, axis="in", **kw),
    )


def best_format(weight: np.ndarray, candidates: Sequence[Spec] | None = None) -> tuple[Spec, int]:
    """The candidate with the fewest bits (first wins a tie), resolved, and its bits.

    Balanced candidates with a fixed k that some group overflows are skipped.
    """
    specs = default_candidates() if candidates is None else tuple(candidates)
    if not specs:
        raise PrunewiseError("best_format needs at least one candidate spec")
    mask = as_mask(weight)
    best: tuple[Spec, int] | None = None
    refused = []
    for spec in specs:
        try:
            bits, resolved = _count(mask, spec)
        except OverfullGroupError as exc:
            refused.append(str(exc))
            continue
        if best is None or bits < best[1]:
            best = (resolved, bits)
    if best is None:
        raise PrunewiseError(f"no candidate format can hold this weight: {refused[0]}")
    return best
