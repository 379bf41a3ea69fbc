"""What a stored tensor looks like: index format and value encoding, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from prunewise.errors import PrunewiseError

__all__ = ["AXES", "FORMAT_NAMES", "VALUE_NAMES", "Spec"]

FORMAT_NAMES = ("dense", "csr", "csc", "bitmap", "balanced")
VALUE_NAMES = ("fp32", "int8", "codebook")
AXES = ("in", "out", "flat")
MAX_GROUP = 1 << 16


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Spec:
    """How one tensor is stored.

    format: "dense", "csr", "csc", "bitmap" or "balanced".
    values: "fp32", "int8" (per-output-channel symmetric) or "codebook" (k-means, 2^q entries).
    index_bits: b, the width of a relative index in csr/csc (2..16).
    codebook_bits: q, the width of a codebook code (1..8).
    group, k, axis: balanced groups of `group` weights along `axis` ("in", "out", "flat"),
        each holding exactly k slots; k=None infers k = the most non-zeros in any group.
    Fields that the chosen format or value encoding does not use are ignored.
    """

    format: str = "dense"
    values: str = "fp32"
    index_bits: int = 4
    codebook_bits: int = 5
    group: int = 16
    k: int | None = None
    axis: str = "in"

    def __post_init__(self) -> None:
        if self.format not in FORMAT_NAMES:
            raise PrunewiseError(
                f"unknown storage format {self.format!r}; known formats: {', '.join(FORMAT_NAMES)}"
            )
        if self.values not in VALUE_NAMES:
            raise PrunewiseError(
                f"unknown value encoding {self.values!r}; known value encodings: "
                f"{', '.join(VALUE_NAMES)}"
            )
        if not _is_int(self.index_bits) or not 2 <= self.index_bits <= 16:
            raise PrunewiseError(
                f"index_bits={self.index_bits!r} is outside 2..16; give the width of a "
                "relative index as an int from 2 to 16 (4 and 8 are usual)"
            )
        if not _is_int(self.codebook_bits) or not 1 <= self.codebook_bits <= 8:
            raise PrunewiseError(
                f"codebook_bits={self.codebook_bits!r} is outside 1..8; give q as an int "
                "from 1 to 8 (the codebook has 2^q entries)"
            )
        if not _is_int(self.group) or not 2 <= self.group <= MAX_GROUP:
            raise PrunewiseError(
                f"group={self.group!r} is not a valid balanced group size g; give an int "
                f"from 2 to {MAX_GROUP} (e.g. 16, the accelerator's channel parallelism)"
            )
        if self.k is not None and (not _is_int(self.k) or not 0 <= self.k <= self.group):
            raise PrunewiseError(
                f"k={self.k!r} is not a valid number of slots per group of {self.group}; "
                f"give an int from 0 to {self.group}, or k=None to infer it from the weight"
            )
        if self.axis not in AXES:
            raise PrunewiseError(
                f"unknown balanced group axis {self.axis!r}; known axes: {', '.join(AXES)} "
                "(along input channels, along output channels, along the flattened row)"
            )

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. "csr(b=4)+int8" or "balanced(g=16,k=4,in)+fp32"."""
        if self.format in ("csr", "csc"):
            fmt = f"{self.format}(b={self.index_bits})"
        elif self.format == "balanced":
            k = "auto" if self.k is None else self.k
            fmt = f"balanced(g={self.group},k={k},{self.axis})"
        else:
            fmt = self.format
        vals = f"codebook(q={self.codebook_bits})" if self.values == "codebook" else self.values
        return f"{fmt}+{vals}"

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Spec:
        """Rebuild a Spec from `to_dict` output, refusing unknown or malformed fields."""
        if not isinstance(data, dict):
            raise PrunewiseError(f"a storage spec must be a dict of fields, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PrunewiseError(
                f"unknown storage spec field(s) {', '.join(unknown)}; known fields: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**data)
