"""Bit packing: fixed-width unsigned integers to and from an MSB-first bit stream.

A stream is a sequence of segments, each `n` unsigned integers of the same width `w`
(0..32 bits), written back to back with no alignment: a segment may start in the middle
of a byte. Within a byte the first bit is the most significant one, and every integer is
written most significant bit first (big-endian). The last byte is padded with zero bits,
so a stream of `bits` bits takes exactly ceil(bits / 8) bytes.
"""

from __future__ import annotations

import numpy as np

from prunewise.errors import PrunewiseError

__all__ = ["BitReader", "BitWriter", "pack_uint", "unpack_uint", "width_for"]

_CHUNK = 1 << 22  # values per chunk (a multiple of 8): bounds the temporary memory
_MAX_WIDTH = 32


def width_for(max_value: int) -> int:
    """Bits needed to store every integer in 0..max_value, i.e. ceil(log2(max_value + 1))."""
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    return int(max_value).bit_length()


def _check_width(width: int) -> None:
    if not 0 <= width <= _MAX_WIDTH:
        raise ValueError(f"bit width must be in 0..{_MAX_WIDTH}, got {width}")


def _pack_small(v: np.ndarray, width: int) -> np.ndarray:
    """Pack widths 2..7: every 8 values become `width` bytes, through one uint64 each."""
    n = v.size
    blocks = np.zeros(-(-n // 8) * 8, dtype=np.uint64)
    blocks[:n] = v
    blocks = blocks.reshape(-1, 8)
    acc = np.zeros(blocks.shape[0], dtype=np.uint64)
    for j in range(8):
        acc |= blocks[:, j] << np.uint64(width * (7 - j))
    out = acc.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - width :]
    return np.ascontiguousarray(out).ravel()[: -(-n * width // 8)]


def _unpack_small(aligned: np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of _pack_small: `count` values of width 2..7 from byte-aligned data."""
    m = -(-count // 8)
    raw = np.zeros(m * width, dtype=np.uint8)
    avail = aligned[: m * width]
    raw[: avail.size] = avail
    full = np.zeros((m, 8), dtype=np.uint8)
    full[:, 8 - width :] = raw.reshape(m, width)
    acc = full.view(">u8").ravel().astype(np.uint64)
    mask = np.uint64((1 << width) - 1)
    out = np.empty((m, 8), dtype=np.uint32)
    for j in range(8):
        out[:, j] = (acc >> np.uint64(width * (7 - j))) & mask
    return out.ravel()[:count]


def pack_uint(values: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integers of `width` bits into bytes (uint8), starting at a byte boundary."""
    _check_width(width)
    v = np.asarray(values).ravel()
    if v.size and (int(v.min()) < 0 or int(v.max()) >> width):
        raise ValueError(f"values do not fit in {width} unsigned bits")
    if width == 0 or v.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if width == 1:
        return np.packbits(v.astype(np.bool_))
    if width < 8:
        return _pack_small(v, width)
    v = v.astype(np.uint32, copy=False)
    if width % 8 == 0:
        as_bytes = v.astype(">u4").view(np.uint8).reshape(-1, 4)[:, 4 - width // 8 :]
        return np.ascontiguousarray(as_bytes).ravel()
    parts = []
    for start in range(0, v.size, _CHUNK):
        chunk = v[start : start + _CHUNK].astype(">u4").view(np.uint8).reshape(-1, 4)
        bits = np.unpackbits(chunk, axis=1)[:, _MAX_WIDTH - width :]
        parts.append(np.packbits(bits))
    return np.concatenate(parts)


def _unpack_any(aligned: np.ndarray, count: int, width: int) -> np.ndarray:
    """Any width 1..32 from byte-aligned data (padded by >= 5 zero bytes), by 40-bit gathers."""
    out = np.empty(count, dtype=np.uint32)
    mask = np.uint64((1 << width) - 1)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        offsets = np.arange(start, start + n, dtype=np.int64) * width
        byte = offsets >> 3
        word = np.zeros(n, dtype=np.uint64)
        for j in range(5):  # 40 bits cover any 32-bit value at any of the 8 bit phases
            word |= aligned[byte + j].astype(np.uint64) << np.uint64(32 - 8 * j)
        shift = (40 - width - (offsets & 7)).astype(np.uint64)
        out[start : start + n] = (word >> shift) & mask
    return out


def unpack_uint(data: np.ndarray, bit_offset: int, count: int, width: int) -> np.ndarray:
    """Read `count` integers of `width` bits from `data` (uint8) starting at `bit_offset`."""
    _check_width(width)
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint32)
    start, phase = divmod(bit_offset, 8)
    n_bytes = -(-(phase + count * width) // 8)
    seg = np.zeros(n_bytes + 6, dtype=np.uint8)  # zero padding for the gathers below
    avail = data[start : start + n_bytes + 1]
    seg[: avail.size] = avail
    if phase:
        seg = (seg << phase) | np.concatenate([seg[1:] >> (8 - phase), [0]]).astype(np.uint8)
    if width == 1:
        return np.unpackbits(seg, count=count).astype(np.uint32)
    if width < 8:
        return _unpack_small(seg, count, width)
    if width % 8 == 0:
        nb = width // 8
        full = np.zeros((count, 4), dtype=np.uint8)
        full[:, 4 - nb :] = seg[: count * nb].reshape(count, nb)
        return full.view(">u4").ravel().astype(np.uint32)
    return _unpack_any(seg, count, width)


class BitWriter:
    """Accumulates fixed-width segments into one bit stream."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._tail = 0  # the partial last byte, its bits in the high end
        self._tail_bits = 0
        self.bits = 0

    def write(self, values: np.ndarray, width: int) -> None:
        """Append every value of `values` as an unsigned integer of `width` bits."""
        packed = pack_uint(values, width)
        n_bits = int(np.asarray(values).size) * width
        if n_bits == 0:
            return
        self.bits += n_bits
        s = self._tail_bits
        if s:
            wide = packed.astype(np.uint16)
            shifted = np.zeros(packed.size + 1, dtype=np.uint16)
            shifted[:-1] = wide >> s
            shifted[1:] |= (wide << (8 - s)) & 0xFF
            shifted[0] |= self._tail
            packed = shifted.astype(np.uint8)
        total = s + n_bits
        full = total // 8
        self._parts.append(packed[:full])
        self._tail_bits = total % 8
        self._tail = int(packed[full]) if self._tail_bits else 0

    def getvalue(self) -> bytes:
        """The stream so far: ceil(bits / 8) bytes, the last one padded with zero bits."""
        parts = [*self._parts]
        if self._tail_bits:
            parts.append(np.array([self._tail], dtype=np.uint8))
        if not parts:
            return b""
        return np.concatenate(parts).tobytes()


class BitReader:
    """Reads fixed-width segments back from a bit stream, refusing to read past its end."""

    def __init__(self, data: bytes, what: str = "payload") -> None:
        self._data = np.frombuffer(data, dtype=np.uint8)
        self._size_bits = len(data) * 8
        self._what = what
        self.pos = 0

    def read(self, count: int, width: int) -> np.ndarray:
        """The next `count` integers of `width` bits, as uint32."""
        if count < 0 or self.pos + count * width > self._size_bits:
            raise PrunewiseError(
                f"{self._what} is truncated or damaged: it needs {count} more values of "
                f"{width} bits at bit {self.pos}, but it has only {self._size_bits} bits; "
                "write the file again"
            )
        out = unpack_uint(self._data, self.pos, count, width)
        self.pos += count * width
        return out

    def finish(self) -> None:
        """Check that the stream ends here: at most 7 zero padding bits are left."""
        padding = self._size_bits - self.pos
        rest = unpack_uint(self._data, self.pos, 1, padding)[0] if 0 < padding < 8 else 0
        if not 0 <= padding < 8 or rest:
            raise PrunewiseError(
                f"{self._what} is damaged: its content ends at bit {self.pos} but it holds "
                f"{self._size_bits} bits; write the file again"
            )
