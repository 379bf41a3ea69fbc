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
import math
import pickle
import warnings
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any, BinaryIO

import torch

from prunewise.errors import PrunewiseError
from prunewise.resources import free_if_short, gigabytes

__all__ = ["check_torch_file", "torch_load"]

_SLACK = 1 << 20
_MAX_PICKLES = 5
"""torch's legacy format: magic number, protocol, system facts, the object, storage keys."""
_REFERENCE = 8
"""Bytes counted per element a call copies out of a container (a pointer)."""


class _Inert:
    """What a replayed pickle builds in place of an object: takes every call, item, attribute
    and iteration (so the replay goes on wherever torch's loader would), records nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __getattr__(self, name: str) -> _Inert:
        return _Inert()

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def __getitem__(self, key: object) -> _Inert:
        return _Inert()

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _copied(
    args: tuple[Any, ...], kwargs: dict[str, Any], itemsize: int | None, seen: set[int]
) -> int:
    """Bytes a call may make from its arguments: every element of a container or string it
    is given again (a constructor copies them; the first use of one is paid for by the bytes
    of the file that built it, so `seen` holds the ids of those given before), and for a
    tensor or storage type called with sizes, their product times the element size."""
    values = [*args, *kwargs.values()]
    size = 0
    for v in values:
        if isinstance(v, Sized) and not isinstance(v, _Inert):
            if id(v) in seen:
                size += len(v) * (1 if isinstance(v, str | bytes | bytearray) else _REFERENCE)
            seen.add(id(v))
    if itemsize is not None:
        dims = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(values) == 1 and isinstance(values[0], list | tuple):  # torch.Size-like
            dims = [v for v in values[0] if isinstance(v, int)]
        size += math.prod(max(d, 0) for d in dims) * itemsize if dims else 0
    return size


class _Replay(pickle._Unpickler):  # the pure-Python unpickler: its memo is a dict
    """Replays a pickle building only inert stand-ins, and the byte strings that `bytearray`
    and `_codecs.encode` make; counts every byte a call could make (refused beyond `budget`)
    and sums the storage bytes declared."""

    def __init__(self, file: BinaryIO, budget: int, where: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.budget, self.where = budget, where
        self.made = 0
        self.storage_bytes = 0
        self.named = False  # whether the pickle named a class or function (what can allocate)
        self.seen: set[int] = set()  # the containers and strings calls were given

    def _count(self, size: int) -> None:
        self.made += max(size, 0)
        if self.made > self.budget:
            raise PrunewiseError(
                f"{self.where} asks the loader to make over {self.made:,} bytes from a file of "
                f"{self.where.stat().st_size:,}: refused (a crafted file; a genuine one carries "
                "the bytes it holds)"
            )

    def _bytearray(self, source: object = b"", *args: Any) -> bytearray | _Inert:
        copied = _copied((source,), {}, None, self.seen)
        self._count(source if isinstance(source, int) else copied)
        if not isinstance(source, int | str | bytes | bytearray):
            return _Inert()
        return bytearray(source, *args)  # type: ignore[arg-type]

    def _encode(self, value: object, *args: Any) -> bytes | _Inert:
        if not isinstance(value, str | bytes | bytearray):
            return _Inert()
        made = codecs.encode(value, *args)  # at most ~10 bytes a byte of what was counted
        self._count(len(made))
        return made

    def _stand_in(self, module: str, name: str) -> type[_Inert]:
        """An inert class for `module.name` whose calls are counted (`_copied`)."""
        itemsize = _itemsize(module, name)
        replay = self

        class StandIn(_Inert):
            def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
                replay._count(_copied(args, kwargs, itemsize, replay.seen))
                return object.__new__(cls)

        StandIn.__name__ = StandIn.__qualname__ = name
        StandIn.itemsize = itemsize or 1  # type: ignore[attr-defined]
        return StandIn

    def find_class(self, module: str, name: str) -> Any:
        self.named = True
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == ("builtins", "bytearray"):
            return self._bytearray
        if (module, name) == ("_codecs", "encode"):
            return self._encode
        return self._stand_in(module, name)

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, numel[, view]): what torch allocates;
        # ('module', class, file, source) in the legacy format: torch gives the class back
        if isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[4], int):
            self.storage_bytes += max(pid[4], 0) * getattr(pid[1], "itemsize", 1)
        if isinstance(pid, tuple) and pid and pid[0] == "module" and isinstance(pid[1], type):
            return pid[1]
        return _Inert()


def _itemsize(module: str, name: str) -> int | None:
    """The element size of one of torch's tensor or storage types (8 when it has no dtype),
    None for anything else."""
    if not module.startswith("torch") or not name.endswith(("Tensor", "Storage")):
        return None
    with warnings.catch_warnings():  # the typed storages are deprecated, their dtype is not
        warnings.simplefilter("ignore")
        dtype = getattr(getattr(torch, name, None), "dtype", None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else 8


def _replay(stream: BinaryIO, budget: int, where: Path, count: int) -> int:
    """Replay up to `count` pickles from `stream`; the storage bytes they declare. A stream
    that ends, or is no pickle (it breaks off before naming any class or function), ends the
    replay: torch.load says what it is. A pickle that breaks off after naming one is refused
    (torch's loader might go on past what the replay could read, to a call that allocates)."""
    storage = 0
    for _ in range(count):
        start = stream.tell()
        replay = _Replay(stream, budget, where)
        try:
            replay.load()
        except PrunewiseError:
            raise
        except Exception as exc:
            if not replay.named:
                break
            raise PrunewiseError(
                f"{where} is not a file torch.save wrote: read as a pickle, it breaks off after "
                f"{stream.tell() - start:,} bytes ({type(exc).__name__}: {str(exc)[:80]}); "
                "damaged or crafted, refused"
            ) from exc
        finally:
            budget -= replay.made
            storage += replay.storage_bytes
    return storage


def _is_zip(path: Path) -> bool:
    """What torch.load takes for a zip archive (its own test: the local-header magic)."""
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def check_torch_file(path: str | Path) -> None:
    """Refuse a torch file that would make `torch.load` allocate beyond the free memory
    (storages, compressed entries) or make byte strings beyond its own size (module
    docstring). Reads the archive with torch's own reader, so it sees the entries torch
    loads; builds and runs nothing of the file.

    Raises PrunewiseError naming the file and the sizes, or for a pickle that breaks off;
    returns None for anything else (a file torch cannot read is left for torch.load to say).
    """
    path = Path(path)
    budget = 2 * path.stat().st_size + _SLACK
    if _is_zip(path):
        try:
            reader = torch._C.PyTorchFileReader(str(path))
            records = reader.get_all_records()
            needed = sum(reader.get_record_size(name) for name in records)
        except RuntimeError:  # not an archive torch reads: torch.load will fail alike
            return
        if (free := free_if_short(needed)) is not None:
            raise PrunewiseError(
                f"{path} holds {gigabytes(needed)} once unpacked, more than the "
                f"{gigabytes(free)} free: refused"
            )
        for name in records:
            if name.endswith(".pkl"):
                _replay(io.BytesIO(bytes(reader.get_record(name))), budget, path, 1)
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
