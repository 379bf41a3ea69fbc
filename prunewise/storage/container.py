"""The whole-model file: a header with a JSON table of contents, then the payloads.

Layout (integers little-endian):
    8 bytes  magic b"PWSPARSE"
    2 bytes  version (u16), currently 1
    4 bytes  table-of-contents length T (u32)
    4 bytes  CRC-32 of the table of contents (u32)
    T bytes  table of contents, UTF-8 JSON: {"tensors": [{"name", "shape", "spec", "bits",
             "offset", "length", "crc32"}, ...]}, offsets relative to the first payload
    payloads, back to back in table order, each exactly ceil(bits / 8) bytes
So the file size is header (18 + T bytes) + the sum of the payload lengths, nothing else.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from prunewise.errors import PrunewiseError
from prunewise.resources import free_if_short, gigabytes
from prunewise.storage.codec import Encoded, decode, encode
from prunewise.storage.spec import Spec

__all__ = [
    "MAGIC",
    "MAX_DIMS",
    "VERSION",
    "Toc",
    "TocEntry",
    "read_compressed",
    "read_toc",
    "write_compressed",
]

MAGIC = b"PWSPARSE"
VERSION = 1
_HEAD = struct.Struct("<8sHII")


@dataclass(frozen=True)
class TocEntry:
    """One tensor in the file's table of contents."""

    name: str
    shape: tuple[int, ...]
    spec: Spec
    bits: int
    offset: int
    length: int
    crc32: int


@dataclass(frozen=True)
class Toc:
    """The table of contents and the header size (payloads start at header_bytes)."""

    entries: tuple[TocEntry, ...]
    header_bytes: int


def write_compressed(
    path: str | Path, tensors: dict[str, np.ndarray], specs: dict[str, Spec] | Spec
) -> int:
    """Encode every tensor in its spec (one Spec for all, or one per name); return file bytes."""
    from prunewise.io import atomic_write_bytes  # heavy (torch); only writing needs it

    if isinstance(specs, Spec):
        specs = dict.fromkeys(tensors, specs)
    missing = [n for n in tensors if n not in specs]
    extra = [n for n in specs if n not in tensors]
    if missing or extra:
        raise PrunewiseError(
            f"specs must name exactly the tensors: missing {missing or 'none'}, "
            f"not a tensor {extra or 'none'}; give one Spec per tensor name"
        )
    entries, payloads, offset = [], [], 0
    for name, weight in tensors.items():
        if not isinstance(name, str):
            raise PrunewiseError(f"tensor names must be strings, got {name!r}")
        enc = encode(weight, specs[name])
        entries.append(
            {
                "name": name,
                "shape": list(enc.shape),
                "spec": enc.spec.to_dict(),
                "bits": enc.bits,
                "offset": offset,
                "length": enc.nbytes,
                "crc32": zlib.crc32(enc.payload),
            }
        )
        payloads.append(enc.payload)
        offset += enc.nbytes
    toc = json.dumps({"tensors": entries}, separators=(",", ":")).encode()
    data = b"".join([_HEAD.pack(MAGIC, VERSION, len(toc), zlib.crc32(toc)), toc, *payloads])
    atomic_write_bytes(path, data)
    return len(data)


def _damaged(path: Path, why: str) -> PrunewiseError:
    return PrunewiseError(f"{path} is damaged or truncated ({why}); write it again")


MAX_DIMS = 32
"""Most dimensions a stored tensor may have (a weight has at most 5; NumPy stops at 64)."""


def _entry(path: Path, raw: object, offset: int) -> TocEntry:
    try:
        e = TocEntry(
            name=raw["name"],
            shape=tuple(raw["shape"]),
            spec=Spec.from_dict(raw["spec"]),
            bits=raw["bits"],
            offset=raw["offset"],
            length=raw["length"],
            crc32=raw["crc32"],
        )
    except (KeyError, TypeError, PrunewiseError) as exc:
        raise _damaged(path, f"bad table-of-contents entry: {exc}") from exc
    ints = (e.bits, e.offset, e.length, e.crc32)
    if (
        not isinstance(e.name, str)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in e.shape)
        or len(e.shape) > MAX_DIMS
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ints)
        or e.offset != offset
        or e.length != -(-e.bits // 8)
    ):
        raise _damaged(path, f"table-of-contents entry {raw!r} is inconsistent")
    return e


def _parse(path: Path, data: bytes) -> Toc:
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise PrunewiseError(
            f"{path} is not a prunewise sparse file (it does not start with {MAGIC!r}); "
            "write it with prunewise.storage.write_compressed"
        )
    if len(data) < _HEAD.size:
        raise _damaged(path, f"{len(data)} bytes, shorter than the {_HEAD.size}-byte header")
    _, version, toc_len, toc_crc = _HEAD.unpack_from(data)
    if version != VERSION:
        raise PrunewiseError(
            f"{path} is a prunewise sparse file of version {version}, but this prunewise "
            f"reads version {VERSION} only; use the prunewise that wrote it"
        )
    header_bytes = _HEAD.size + toc_len
    toc = data[_HEAD.size : header_bytes]
    if len(toc) != toc_len:
        raise _damaged(path, "the table of contents is cut short")
    if zlib.crc32(toc) != toc_crc:
        raise _damaged(path, "table-of-contents checksum mismatch")
    try:
        raw = json.loads(toc)["tensors"]
        if not isinstance(raw, list):
            raise TypeError("tensors is not a list")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # nesting a crafted file
        raise _damaged(path, f"unreadable table of contents: {type(exc).__name__}") from exc
    entries, offset = [], 0
    for item in raw:
        entry = _entry(path, item, offset)
        entries.append(entry)
        offset += entry.length
    if len({e.name for e in entries}) != len(entries):
        raise _damaged(path, "a tensor name appears twice")
    if len(data) != header_bytes + offset:
        raise _damaged(
            path, f"{len(data)} bytes, but header and payloads need {header_bytes + offset}"
        )
    return Toc(tuple(entries), header_bytes)


def _read(path: str | Path) -> tuple[Path, bytes]:
    path = Path(path)
    try:
        return path, path.read_bytes()
    except FileNotFoundError as exc:
        raise PrunewiseError(f"{path} does not exist; check the path") from exc
    except IsADirectoryError as exc:
        raise PrunewiseError(f"{path} is a directory; give the sparse file inside it") from exc
    except OSError as exc:
        raise PrunewiseError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_toc(path: str | Path) -> Toc:
    """The table of contents of a file `write_compressed` wrote (checked, payloads not decoded)."""
    return _parse(*_read(path))


def read_compressed(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a file `write_compressed` wrote, decoded to float32, in file order."""
    path, data = _read(path)
    toc = _parse(path, data)
    needed = 4 * sum(prod(e.shape) for e in toc.entries)  # float32, decoded
    if (free := free_if_short(needed)) is not None:
        raise PrunewiseError(
            f"{path} declares weights of {gigabytes(needed)} decoded, more than the "
            f"{gigabytes(free)} free; nothing was decoded"
        )
    out = {}
    for e in toc.entries:
        start = toc.header_bytes + e.offset
        payload = data[start : start + e.length]
        if zlib.crc32(payload) != e.crc32:
            raise _damaged(path, f"checksum mismatch in the payload of {e.name!r}")
        try:
            out[e.name] = decode(Encoded.checked(e.shape, e.spec, e.bits, payload))
        except PrunewiseError as exc:
            why = re.sub(r"; write (it|the file) again$", "", str(exc))
            raise _damaged(path, f"tensor {e.name!r}: {why}") from exc
        if not np.isfinite(out[e.name]).all():
            raise _damaged(path, f"tensor {e.name!r} holds NaN or infinite values")
    return out
