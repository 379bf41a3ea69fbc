"""Reading torch files from others: what a file may make the loader allocate, checked first.

`torch.load(weights_only=True)` builds only tensors and plain containers, so a file cannot run
code; it can still make the loader allocate far more memory than the file holds:

- a storage compressed in the zip archive (torch.save never compresses) is inflated whole,
  about a thousand bytes per byte of file;
- `bytearray(n)` and `_codecs.encode`, on torch's weights-only allow-list, make `n` bytes from
  a few, and nested hex encodings double the bytes at every step (a 1.6 KB file made 512 MB
  with 28 of them, and each further one doubles it).

`check_torch_file` reads the archive's table and replays the file's pickles with an unpickler
that builds nothing but those byte strings (every other class and function becomes an inert
stub; pure Python, so a memo index cannot make it allocate either), counting the bytes before
`bytearray(n)` makes them and after each encoding. A file is refused when its storages exceed
the free memory or its byte strings exceed what the file itself holds (twice its size and a
mebibyte: a genuine file's byte strings are copies of bytes it carries).
`torch_load` is `torch.load(weights_only=True)` after the check.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from prunewise.errors import PrunewiseError
from prunewise.resources import free_if_short, gigabytes

__all__ = ["check_torch_file", "torch_load"]

_SLACK = 1 << 20
_MAX_PICKLES = 5
"""torch's legacy format: magic number, protocol, system facts, the object, storage keys."""


class _Inert:
    """What a replayed pickle builds in place of a class or function: accepts every call,
    item and attribute, records nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __getattr__(self, name: str) -> _Inert:
        return _Inert()

    def __setitem__(self, key: object, value: object) -> None:
        pass


class _Replay(pickle._Unpickler):  # the pure-Python unpickler: its memo is a dict
    """Replays a pickle without building anything but the byte strings it asks for (counted
    before they are made, refused beyond `budget` bytes); sums the storage bytes declared."""

    def __init__(self, file: BinaryIO, budget: int, where: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.budget, self.where = budget, where
        self.made = 0
        self.storage_bytes = 0

    def _count(self, size: int) -> None:
        self.made += max(size, 0)
        if self.made > self.budget:
            raise PrunewiseError(
                f"{self.where} asks the loader to make over {self.made:,} bytes from a file of "
                f"{self.where.stat().st_size:,}: refused (a crafted file; a genuine one carries "
                "the bytes it holds)"
            )

    def _bytearray(self, source: object = b"", *args: Any) -> bytearray | _Inert:
        if isinstance(source, int):
            self._count(source)
        elif not isinstance(source, str | bytes | bytearray):
            return _Inert()
        return bytearray(source, *args)  # type: ignore[arg-type]

    def _encode(self, value: object, *args: Any) -> bytes | _Inert:
        if not isinstance(value, str | bytes | bytearray):
            return _Inert()
        made = codecs.encode(value, *args)  # at most ~10 bytes a byte of what was counted
        self._count(len(made))
        return made

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == ("builtins", "bytearray"):
            return self._bytearray
        if (module, name) == ("_codecs", "encode"):
            return self._encode
        return _storage_class(module, name) or _Inert

    def persistent_load(self, pid: Any) -> _Inert:
        # ('storage', storage type, key, location, numel[, view]): what torch allocates
        if isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[4], int):
            self.storage_bytes += max(pid[4], 0) * getattr(pid[1], "itemsize", 1)
        return _Inert()


class _StorageClass(_Inert):
    itemsize = 1


def _storage_class(module: str, name: str) -> type[_Inert] | None:
    """An inert stand-in for one of torch's storage types that knows its element size."""
    if module != "torch" or not name.endswith("Storage"):
        return None
    with warnings.catch_warnings():  # the typed storages are deprecated, their dtype is not
        warnings.simplefilter("ignore")
        dtype = getattr(getattr(torch, name, None), "dtype", None)
    itemsize = dtype.itemsize if isinstance(dtype, torch.dtype) else 1
    return type(name, (_StorageClass,), {"itemsize": itemsize})


def _replay(stream: BinaryIO, budget: int, where: Path, count: int) -> int:
    """Replay up to `count` pickles from `stream`; the storage bytes they declare."""
    storage = 0
    for _ in range(count):
        replay = _Replay(stream, budget, where)
        try:
            replay.load()
        except PrunewiseError:
            raise
        except Exception:  # not (or no longer) a pickle: torch.load will say what it is
            break
        finally:
            budget -= replay.made
            storage += replay.storage_bytes
    return storage


def _zip_members(path: Path) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    names = [m.filename for m in members]
    if len(set(names)) != len(names):
        raise PrunewiseError(f"{path} holds two archive entries of one name; refused")
    return members


def check_torch_file(path: str | Path) -> None:
    """Refuse a torch file that would make `torch.load` allocate beyond the free memory
    (storages, compressed entries) or make byte strings beyond its own size (module
    docstring). Reads the archive table and the pickles only; builds and runs nothing.

    Raises PrunewiseError naming the file and the sizes; returns None for anything else
    (a file torch cannot read is left for torch.load to report).
    """
    path = Path(path)
    budget = 2 * path.stat().st_size + _SLACK
    if zipfile.is_zipfile(path):
        try:
            members = _zip_members(path)
        except (zipfile.BadZipFile, OSError, ValueError):
            return
        needed = sum(m.file_size for m in members)
        if (free := free_if_short(needed)) is not None:
            raise PrunewiseError(
                f"{path} holds {gigabytes(needed)} once unpacked, more than the "
                f"{gigabytes(free)} free: refused"
            )
        with zipfile.ZipFile(path) as archive:
            for member in members:
                if member.filename.endswith(".pkl"):
                    _replay(io.BytesIO(archive.read(member)), budget, path, 1)
        return
    with path.open("rb") as f:
        needed = _replay(f, budget, path, _MAX_PICKLES)
    if (free := free_if_short(needed)) is not None:
        raise PrunewiseError(
            f"{path} declares {gigabytes(needed)} of tensors, more than the {gigabytes(free)} "
            "free: refused"
        )


def torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` after `check_torch_file`. Raises PrunewiseError
    for a file the check refuses, and what torch.load raises otherwise."""
    check_torch_file(path)
    return torch.load(path, map_location=map_location, weights_only=True)
