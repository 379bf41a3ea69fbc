"""The whole-model file: round trip, exact sizes, and clear errors for damaged files."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from prunewise.errors import PrunewiseError
from prunewise.storage import (
    MAGIC,
    Spec,
    format_bits,
    format_bytes,
    quantize_values,
    read_compressed,
    read_toc,
    write_compressed,
)


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    conv = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    conv[rng.random(conv.shape) < 0.6] = 0
    fc = rng.standard_normal((10, 256)).astype(np.float32)
    fc[rng.random(fc.shape) < 0.9] = 0
    bias = rng.standard_normal(10).astype(np.float32)
    return {"features.0.weight": conv, "classifier.weight": fc, "classifier.bias": bias}


SPECS = {
    "features.0.weight": Spec("balanced", group=8, values="int8"),
    "classifier.weight": Spec("csr", index_bits=4, values="codebook", codebook_bits=4),
    "classifier.bias": Spec("dense"),
}


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], int]:
    path = tmp_path / "model.pws"
    tensors = _model()
    return path, tensors, write_compressed(path, tensors, SPECS)


def test_file_round_trip_is_bit_identical(written: tuple) -> None:
    path, tensors, _ = written
    back = read_compressed(path)
    assert list(back) == list(tensors)
    for name, w in tensors.items():
        expected = quantize_values(w, SPECS[name])
        assert back[name].shape == w.shape
        assert np.array_equal(back[name].view(np.uint32), expected.view(np.uint32))


def test_file_size_is_header_plus_payloads(written: tuple) -> None:
    path, tensors, size = written
    toc = read_toc(path)
    assert size == path.stat().st_size == toc.header_bytes + sum(e.length for e in toc.entries)
    offset = 0
    for entry in toc.entries:
        w, spec = tensors[entry.name], SPECS[entry.name]
        assert entry.bits == format_bits(w, spec)
        assert entry.length == format_bytes(w, spec) == -(-entry.bits // 8)
        assert entry.offset == offset
        offset += entry.length
    assert toc.entries[0].spec.k is not None  # balanced k inferred and recorded
    raw = path.read_bytes()
    assert raw[:8] == MAGIC == b"PWSPARSE"
    (toc_len,) = struct.unpack_from("<I", raw, 10)
    assert toc.header_bytes == 18 + toc_len


def test_one_spec_for_all_and_mismatched_specs(tmp_path: Path) -> None:
    tensors = _model()
    n = write_compressed(tmp_path / "a.pws", tensors, Spec("bitmap", values="int8"))
    assert n == (tmp_path / "a.pws").stat().st_size
    assert set(read_compressed(tmp_path / "a.pws")) == set(tensors)
    with pytest.raises(PrunewiseError, match=r"missing \['classifier.bias'\]"):
        write_compressed(tmp_path / "b.pws", tensors, {k: SPECS[k] for k in list(SPECS)[:2]})
    assert not (tmp_path / "b.pws").exists()


def _rewrite_toc(raw: bytes, edit) -> bytes:
    """The file with its table of contents edited and its checksum made valid again."""
    _, version, toc_len, _ = struct.unpack_from("<8sHII", raw)
    toc = json.loads(raw[18 : 18 + toc_len])
    edit(toc)
    new = json.dumps(toc).encode()
    return (
        struct.pack("<8sHII", MAGIC, version, len(new), zlib.crc32(new)) + new + raw[18 + toc_len :]
    )


def _nested_toc(raw: bytes) -> bytes:
    """A table of contents nested deeper than the JSON reader recurses, checksum valid."""
    version = struct.unpack_from("<8sHII", raw)[1]
    new = b"[" * 100_000
    return struct.pack("<8sHII", MAGIC, version, len(new), zlib.crc32(new)) + new


def _set_length(toc: dict) -> None:
    toc["tensors"][1]["length"] += 1


def _bad_spec(toc: dict) -> None:
    toc["tensors"][0]["spec"]["format"] = "coo"


def _no_tensors(toc: dict) -> None:
    del toc["tensors"]


def _many_dims(toc: dict) -> None:  # the same elements in more dimensions than NumPy takes
    toc["tensors"][0]["shape"] = [1] * 63 + toc["tensors"][0]["shape"]


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        (lambda raw: b"", "does not start with b'PWSPARSE'"),
        (lambda raw: b"NOTMAGIC" + raw[8:], "not a prunewise sparse file"),
        (lambda raw: raw[:12], "shorter than the 18-byte header"),
        (lambda raw: raw[:30], "table of contents is cut short"),
        (lambda raw: raw[:-1], "damaged or truncated"),
        (lambda raw: raw + b"\x00", "damaged or truncated"),
        (lambda raw: raw[:8] + struct.pack("<H", 2) + raw[10:], "version 2"),
        (lambda raw: raw[:20] + bytes([raw[20] ^ 1]) + raw[21:], "checksum mismatch"),
        (lambda raw: raw[:-3] + bytes([raw[-3] ^ 0x40]) + raw[-2:], "checksum mismatch"),
        (lambda raw: _rewrite_toc(raw, _set_length), "inconsistent"),
        (lambda raw: _rewrite_toc(raw, _bad_spec), "unknown storage format"),
        (lambda raw: _rewrite_toc(raw, _no_tensors), "unreadable table of contents"),
        (lambda raw: _rewrite_toc(raw, _many_dims), "inconsistent"),
        (lambda raw: _nested_toc(raw), "unreadable table of contents: RecursionError"),
    ],
)
def test_damaged_files_give_clear_errors(written: tuple, damage, phrase: str) -> None:
    path, _, _ = written
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PrunewiseError, match=re.escape(phrase)):
        read_compressed(path)


def test_every_truncation_is_a_prunewise_error(written: tuple) -> None:
    path, _, _ = written
    raw = path.read_bytes()
    for cut in range(0, len(raw), max(1, len(raw) // 97)):
        path.write_bytes(raw[:cut])
        with pytest.raises(PrunewiseError):
            read_compressed(path)


def test_payload_damage_behind_a_valid_checksum_is_still_caught(tmp_path: Path) -> None:
    # csr row pointers rewritten so that they decrease; the checksum is recomputed.
    w = np.zeros((4, 40), np.float32)
    w[0, 3] = w[2, 39] = 1.0
    path = tmp_path / "m.pws"
    write_compressed(path, {"w": w}, Spec("csr", index_bits=4))
    raw = bytearray(path.read_bytes())
    start = read_toc(path).header_bytes
    raw[start + 1] = 0xFF  # the first pointers: no longer 0, 1, ...
    payload = bytes(raw[start:])

    def fix_crc(toc: dict) -> None:
        toc["tensors"][0]["crc32"] = zlib.crc32(payload)

    path.write_bytes(_rewrite_toc(bytes(raw), fix_crc))
    with pytest.raises(PrunewiseError, match="row pointers"):
        read_compressed(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PrunewiseError, match="does not exist"):
        read_compressed(tmp_path / "nope.pws")
    with pytest.raises(PrunewiseError, match="is a directory"):
        read_compressed(tmp_path)


def test_a_shape_beyond_free_memory_is_refused_before_decoding(written: tuple) -> None:
    path, _, _ = written

    def huge(toc: dict) -> None:  # an empty CSR matrix of 2^40 elements: a few bytes stored
        toc["tensors"][1]["shape"] = [1 << 20, 1 << 20]

    path.write_bytes(_rewrite_toc(path.read_bytes(), huge))
    with pytest.raises(PrunewiseError, match=r"declares weights of 4096.0 GB decoded, more than"):
        read_compressed(path)
