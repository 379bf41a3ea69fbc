"""Sparse weight storage: exact byte counts, encoders, decoders and a whole-model file.

Formats (index part): dense, csr, csc, bitmap, balanced; value encodings: fp32, int8,
codebook. See the module docstrings of formats.py, balanced.py and values.py for the exact
counting rules, and container.py for the file layout.
"""

from prunewise.storage.balanced import OverfullGroupError
from prunewise.storage.codec import (
    Encoded,
    best_format,
    decode,
    default_candidates,
    encode,
    format_bits,
    format_bytes,
)
from prunewise.storage.container import (
    MAGIC,
    VERSION,
    Toc,
    TocEntry,
    read_compressed,
    read_toc,
    write_compressed,
)
from prunewise.storage.formats import FORMATS, get_format
from prunewise.storage.spec import AXES, FORMAT_NAMES, VALUE_NAMES, Spec
from prunewise.storage.values import kmeans_1d, quantize_values

__all__ = [
    "AXES",
    "FORMATS",
    "FORMAT_NAMES",
    "MAGIC",
    "VALUE_NAMES",
    "VERSION",
    "Encoded",
    "OverfullGroupError",
    "Spec",
    "Toc",
    "TocEntry",
    "best_format",
    "decode",
    "default_candidates",
    "encode",
    "format_bits",
    "format_bytes",
    "get_format",
    "kmeans_1d",
    "quantize_values",
    "read_compressed",
    "read_toc",
    "write_compressed",
]
