"""A torch file may not make the loader allocate beyond what it holds (prunewise.torchfile)."""

from __future__ import annotations

import argparse
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch

import prunewise.resources
from prunewise.errors import PrunewiseError
from prunewise.io import load_checkpoint
from prunewise.models.unpickle import load_without_code
from prunewise.models.weights import read_weights
from prunewise.torchfile import check_torch_file, torch_load


def _with_pickle(tmp_path: Path, name: str, pickled: bytes) -> Path:
    """A torch.save zip archive whose data.pkl is `pickled`."""
    genuine = tmp_path / "genuine.pt"
    torch.save({"w": torch.zeros(4)}, genuine)
    out = tmp_path / name
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(out, "w") as dst:
        for member in src.namelist():
            data = pickled if member.endswith("/data.pkl") else src.read(member)
            dst.writestr(member, data)
    return out


def _call(module: str, name: str, *args: bytes) -> bytes:
    """Pickle opcodes for module.name(*args), each of `args` the opcodes pushing one value."""
    tuple_of = {1: b"\x85", 2: b"\x86"}[len(args)]  # TUPLE1, TUPLE2
    return f"c{module}\n{name}\n".encode() + b"".join(args) + tuple_of + b"R"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def _bytearray_of(n: int) -> bytes:
    """bytearray(n): n bytes from a few."""
    digits = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return (
        b"\x80\x02"
        + _call("__builtin__", "bytearray", b"\x8a" + bytes([len(digits)]) + digits)
        + b"."
    )


def _hex_encoded(times: int) -> bytes:
    """_codecs.encode(..., 'hex') nested `times` deep around two bytes: 2 * 2**times bytes."""
    inner = _call("_codecs", "encode", _str("ab"), _str("latin1"))
    for _ in range(times):
        inner = _call("_codecs", "encode", inner, _str("hex"))
    return b"\x80\x02" + inner + b"."


def _int(n: int) -> bytes:
    digits = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(digits)]) + digits  # LONG1


def _copies(count: int) -> bytes:
    """A list of `count` bytearray copies of one memoized 64 KiB string (about 30 bytes each)."""
    text = b"X" + (1 << 16).to_bytes(4, "little") + b"x" * (1 << 16) + b"q\x01"  # memo 1
    copy = _call("__builtin__", "bytearray", b"h\x01", _str("latin1"))  # BINGET 1
    return b"\x80\x02](" + text + copy * count + b"e."


MADE_FROM_LITTLE = {
    "bytearray(n)": _bytearray_of(64 << 20),
    "nested-encodings": _hex_encoded(20),
    "copies-of-one-string": _copies(200),
    "tensor-type-with-a-size": b"\x80\x02" + _call("torch", "ByteTensor", _int(64 << 20)) + b".",
    # bytearray(*OrderedDict()) is a TypeError for a stand-in that cannot be unpacked, while
    # torch builds the empty dict and goes on to the allocation after it
    "after-a-call-a-stand-in-fails": b"\x80\x02("
    + _call("__builtin__", "bytearray", b"ccollections\nOrderedDict\n)R")[:-2]  # unpacked
    + b"R"
    + _call("__builtin__", "bytearray", _int(64 << 20))
    + b"t.",
}


@pytest.mark.parametrize("pickled", MADE_FROM_LITTLE.values(), ids=MADE_FROM_LITTLE.keys())
def test_a_pickle_that_makes_more_bytes_than_the_file_holds_is_refused(tmp_path, pickled) -> None:
    path = _with_pickle(tmp_path, "crafted.pt", pickled)
    assert path.stat().st_size < 16 << 20
    with pytest.raises(PrunewiseError, match="bytes from a file of"):
        check_torch_file(path)
    for load in (load_checkpoint, read_weights, load_without_code, torch_load):
        with pytest.raises(PrunewiseError, match="crafted file"):
            load(path)
    legacy = tmp_path / "legacy.pt"  # torch's pre-zip format: the pickles one after another
    legacy.write_bytes(pickled)
    with pytest.raises(PrunewiseError, match="crafted file"):
        torch_load(legacy)


def test_a_pickle_that_breaks_off_is_refused(tmp_path) -> None:
    path = _with_pickle(tmp_path, "cut.pt", _bytearray_of(10)[:-3])
    with pytest.raises(PrunewiseError, match="breaks off after"):
        torch_load(path)


def test_the_same_calls_within_the_file_s_size_are_read(tmp_path) -> None:
    path = _with_pickle(tmp_path, "small.pt", _hex_encoded(3))
    check_torch_file(path)
    assert torch_load(path) == b"ab".hex().encode().hex().encode().hex().encode()


def test_genuine_files_with_bytes_and_python_objects_pass(tmp_path) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB of bytes, stored as a latin-1 string (protocol 2)
    payload = {"state_dict": {"w": torch.ones(3)}, "blob": big, "array": bytearray(big[:999])}
    for legacy in (False, True):
        path = tmp_path / f"genuine{legacy}.pt"
        torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
        check_torch_file(path)
        assert torch_load(path)["blob"] == big
    sized = tmp_path / "size.pt"  # Size(list of 2-byte ints): one copy of what the file holds
    torch.save({"size": torch.Size([1] * 1_000_000)}, sized)
    assert len(torch_load(sized)["size"]) == 1_000_000
    trained = tmp_path / "train.pth.tar"  # timm's train.py keeps its argparse arguments
    torch.save({"state_dict": {"w": torch.ones(3)}, "args": argparse.Namespace(lr=0.1)}, trained)
    assert torch.equal(read_weights(trained).state["w"], torch.ones(3))


def test_a_memo_index_does_not_make_the_code_free_unpickler_allocate(tmp_path) -> None:
    """CPython's C unpickler grows its memo to twice the index a file names (8 bytes each):
    this 9-byte file would take 256 MiB there; the pure-Python replay and loader keep a dict."""
    path = tmp_path / "memo.pt"
    path.write_bytes(b"\x80\x02N" + b"r" + (1 << 24).to_bytes(4, "little") + b".")
    tracemalloc.start()
    try:
        check_torch_file(path)
        with pytest.raises(RuntimeError, match="magic number"):  # None, not torch's magic
            load_without_code(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_compressed_entries_larger_than_the_free_memory_are_refused(tmp_path, monkeypatch) -> None:
    genuine = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(1 << 20)}, genuine)  # 4 MiB of zeros
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for member in src.namelist():
            dst.writestr(member, src.read(member))
    assert packed.stat().st_size < 64 << 10
    assert torch.equal(torch_load(packed)["w"], torch.zeros(1 << 20))  # torch inflates it
    monkeypatch.setattr(prunewise.resources, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(PrunewiseError, match="once unpacked, more than the"):
        load_checkpoint(packed)
