"""Bit packing: exact stream layout, round trips at every width and offset, truncation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunewise.errors import PrunewiseError
from prunewise.storage.bits import BitReader, BitWriter, pack_uint, unpack_uint, width_for


def test_stream_layout_is_msb_first_and_unaligned() -> None:
    # "001" + "00101" + "101010111100" = 00100101 10101011 1100(0000) -> 0x25 0xAB 0xC0
    w = BitWriter()
    w.write(np.array([1]), 3)
    w.write(np.array([5]), 5)
    w.write(np.array([0xABC]), 12)
    assert w.bits == 20
    assert w.getvalue() == bytes([0x25, 0xAB, 0xC0])


def test_width_for_is_ceil_log2_of_count() -> None:
    assert [width_for(n) for n in (0, 1, 2, 3, 4, 15, 16, 255, 256)] == [0, 1, 2, 2, 3, 4, 5, 8, 9]
    with pytest.raises(ValueError):
        width_for(-1)


def test_pack_refuses_values_too_wide() -> None:
    with pytest.raises(ValueError, match="do not fit in 3"):
        pack_uint(np.array([8]), 3)
    with pytest.raises(ValueError, match=r"0\.\.32"):
        pack_uint(np.array([1]), 33)


@settings(max_examples=200, deadline=None)
@given(
    segments=st.lists(
        st.tuples(st.integers(0, 32), st.integers(0, 40), st.integers(0, 2**32 - 1)),
        min_size=1,
        max_size=6,
    )
)
def test_segments_round_trip(segments: list[tuple[int, int, int]]) -> None:
    writer = BitWriter()
    expected = []
    for width, count, seed in segments:
        rng = np.random.default_rng(seed)
        values = (
            rng.integers(0, 2**width, size=count, dtype=np.uint64)
            if width
            else np.zeros(count, dtype=np.uint64)
        )
        writer.write(values, width)
        expected.append((values, width))
    data = writer.getvalue()
    assert len(data) == -(-writer.bits // 8) == -(-sum(v.size * w for v, w in expected) // 8)
    reader = BitReader(data)
    for values, width in expected:
        np.testing.assert_array_equal(reader.read(values.size, width), values)
    reader.finish()
    assert reader.pos == writer.bits


@pytest.mark.parametrize("width", [1, 3, 7, 8, 13, 16, 24, 32])
@pytest.mark.parametrize("offset", [0, 1, 5, 8, 11])
def test_unpack_at_any_offset(width: int, offset: int) -> None:
    rng = np.random.default_rng(width * 100 + offset)
    values = rng.integers(0, 2**width, size=1001, dtype=np.uint64)
    writer = BitWriter()
    writer.write(np.zeros(offset, dtype=np.uint64), 1)
    writer.write(values, width)
    data = np.frombuffer(writer.getvalue(), dtype=np.uint8)
    np.testing.assert_array_equal(unpack_uint(data, offset, values.size, width), values)


def test_reader_refuses_to_read_past_the_end() -> None:
    reader = BitReader(b"\xff\x00", "test stream")
    assert reader.read(3, 4).tolist() == [15, 15, 0]
    with pytest.raises(PrunewiseError, match="test stream is truncated"):
        reader.read(2, 4)


def test_finish_refuses_leftover_bytes_or_nonzero_padding() -> None:
    reader = BitReader(b"\xf0\x00")
    reader.read(1, 4)
    with pytest.raises(PrunewiseError, match="ends at bit 4"):
        reader.finish()  # 12 bits left: a whole spare byte
    reader = BitReader(b"\xf1")
    reader.read(1, 4)
    with pytest.raises(PrunewiseError, match="damaged"):
        reader.finish()  # the 4 padding bits are not zero
    reader = BitReader(b"\xf0")
    reader.read(1, 4)
    reader.finish()
    assert reader.pos == 4
