"""IDX reading and writing: round trips, plain and gzip, and every kind of corrupt file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunewise.data import read_idx, write_idx
from prunewise.errors import PrunewiseError


def _raw_idx(array: np.ndarray, code: int = 0x08) -> bytes:
    """IDX bytes written by hand (independent of write_idx)."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_read_images_3d(tmp_path: Path, gz: bool) -> None:
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    path = tmp_path / ("img.idx3.gz" if gz else "img.idx3")
    data = _raw_idx(images)
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == np.uint8
    assert out.shape == (5, 4, 3)
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable


@pytest.mark.parametrize("gz", [False, True])
def test_read_labels_1d(tmp_path: Path, gz: bool) -> None:
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint8)
    path = tmp_path / ("labels.gz" if gz else "labels")
    data = _raw_idx(labels)
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(str(path))
    assert out.shape == (8,)
    assert out.tolist() == [3, 1, 4, 1, 5, 9, 2, 6]


def test_header_layout_is_mnist(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros((2, 28, 28), dtype=np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert struct.unpack(">3I", raw[4:16]) == (2, 28, 28)
    assert len(raw) == 16 + 2 * 28 * 28


def test_big_endian_types_round_trip(tmp_path: Path) -> None:
    for dtype, code in ((np.int32, 0x0C), (np.float32, 0x0D), (np.int16, 0x0B)):
        values = (np.arange(12).reshape(3, 4) * 1000 - 5000).astype(dtype)
        path = tmp_path / f"v_{np.dtype(dtype).name}"
        path.write_bytes(_raw_idx(values, code))
        out = read_idx(path)
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out, values)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_write_read_round_trip(tmp_path_factory, shape: list[int], gz: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path_factory.mktemp("rt") / ("a.gz" if gz else "a")
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    out = read_idx(path)
    assert out.shape == tuple(shape)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "type code"),
        (b"\x00\x00\x08\x00", "dimensions"),
        (b"\x00\x00", "shorter"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00", "header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "after the data"),
    ],
)
def test_corrupt_plain_files(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(data)
    with pytest.raises(PrunewiseError, match="corrupt") as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert why in message
    assert "\n" not in message


def test_truncated_real_layout(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "images", np.ones((10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PrunewiseError, match=r"corrupt.*truncated"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "images.gz", np.ones((10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(PrunewiseError, match="corrupt") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_not_gzip_despite_suffix(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(_raw_idx(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(PrunewiseError, match=r"corrupt.*gzip"):
        read_idx(path)


def test_gzip_of_garbage(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(b"\x12\x34\x56\x78 definitely not idx"))
    with pytest.raises(PrunewiseError, match=r"corrupt.*magic"):
        read_idx(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PrunewiseError, match="does not exist") as info:
        read_idx(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(PrunewiseError, match="directory"):
        read_idx(tmp_path)


def test_write_rejects_unsupported(tmp_path: Path) -> None:
    with pytest.raises(PrunewiseError, match="dtype"):
        write_idx(tmp_path / "c", np.zeros(3, dtype=np.complex64))
    with pytest.raises(PrunewiseError, match="dimensions"):
        write_idx(tmp_path / "s", np.zeros((), dtype=np.uint8))
    assert not (tmp_path / "c").exists()


def test_a_header_declaring_more_than_free_memory_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:  # 2^96 bytes declared, a few stored
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1))
        f.write(bytes(1000))
    with pytest.raises(PrunewiseError, match=r"its header declares .* GB, more than free"):
        read_idx(path)
