"""Reader (and writer) for the IDX format of the original MNIST / Fashion-MNIST files.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 size per dimension, then the data in row-major order. Files may be
gzip-compressed (``.gz``). Every structural problem is reported as a `PrunewiseError` that
names the file and says it is corrupt.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from prunewise.errors import PrunewiseError
from prunewise.resources import free_if_short, gigabytes

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type code -> element type as stored (big-endian)."""

_MAX_DIMS = 8
_REFETCH_HINT = "re-download or re-extract it"


def _corrupt(path: Path, why: str) -> PrunewiseError:
    return PrunewiseError(f"{path} is corrupt or not an IDX file ({why}); {_REFETCH_HINT}")


def _declared_length(head: bytes) -> int | None:
    """The whole file's length in bytes that a header says (None: not a valid header)."""
    if len(head) < 4 or head[2] not in IDX_DTYPES or not 1 <= head[3] <= _MAX_DIMS:
        return None
    offset = 4 + 4 * head[3]
    if len(head) < offset:
        return None
    shape = struct.unpack(f">{head[3]}I", head[4:offset])
    return offset + math.prod(shape) * IDX_DTYPES[head[2]].itemsize


def _read_bytes(path: Path) -> bytes:
    """The file's (decompressed) content: the header, then at most what it declares and one
    byte more (a gzip stream is not inflated beyond that), refused beyond free memory."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = f.read(4)
            head += f.read(4 * head[3]) if len(head) == 4 else b""
            declared = _declared_length(head)
            if declared is None:
                return head + f.read(1 << 20)  # the header check words the error
            if free_if_short(declared) is not None:
                raise _corrupt(path, f"its header declares {gigabytes(declared)}, more than free")
            return head + f.read(declared - len(head) + 1)
    except FileNotFoundError as exc:
        raise PrunewiseError(f"{path} does not exist; check the path or --data-dir") from exc
    except IsADirectoryError as exc:
        raise PrunewiseError(f"{path} is a directory, expected an IDX file") from exc
    except PermissionError as exc:
        raise PrunewiseError(f"{path} cannot be read (permission denied); fix its mode") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"broken gzip stream: {exc}") from exc


def _parse_header(path: Path, data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Element type, shape and data offset from the header, validated against the length."""
    if len(data) < 4:
        raise _corrupt(path, f"{len(data)} bytes, shorter than the 4-byte magic number")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise _corrupt(path, f"bad magic number 0x{data[:4].hex()}, must start with 0x0000")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise _corrupt(path, f"unknown type code 0x{code:02X}, allowed: {known}")
    if not 1 <= ndim <= _MAX_DIMS:
        raise _corrupt(path, f"{ndim} dimensions, allowed 1 to {_MAX_DIMS}")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise _corrupt(path, f"truncated header: {len(data)} bytes, the header needs {offset}")
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    dtype = IDX_DTYPES[code]
    expected = offset + math.prod(shape) * dtype.itemsize
    if len(data) < expected:
        raise _corrupt(
            path, f"truncated: {len(data)} bytes, shape {tuple(shape)} needs {expected} bytes"
        )
    if len(data) > expected:
        raise _corrupt(
            path,
            f"{len(data) - expected} bytes after the data of shape {tuple(shape)}",
        )
    return dtype, tuple(int(s) for s in shape), offset


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or .gz) into a native-endian numpy array of its stored shape."""
    path = Path(path)
    data = _read_bytes(path)
    dtype, shape, offset = _parse_header(path, data)
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _type_code(dtype: np.dtype) -> int:
    """IDX type code of a numpy element type."""
    for code, stored in IDX_DTYPES.items():
        if stored.kind == dtype.kind and stored.itemsize == dtype.itemsize:
            return code
    allowed = "uint8, int8, int16, int32, float32, float64"
    raise PrunewiseError(f"IDX cannot store dtype {dtype}; convert the array to one of {allowed}")


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write `array` as an IDX file; gzip-compressed when `compress` (default: path ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    if not 1 <= array.ndim <= _MAX_DIMS:
        raise PrunewiseError(f"IDX stores 1 to {_MAX_DIMS} dimensions, the array has {array.ndim}")
    if any(s >= 2**32 for s in array.shape):
        raise PrunewiseError(f"IDX sizes must fit in 32 bits, the array has shape {array.shape}")
    code = _type_code(array.dtype)
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path
