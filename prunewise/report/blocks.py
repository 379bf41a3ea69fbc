"""The blocks a report is made of (paragraphs are plain str), free of any output format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Details",
    "Document",
    "Figure",
    "Section",
    "Table",
    "integer",
    "plain_table",
    "three_decimals",
]


@dataclass(frozen=True)
class Table:
    """Cells already formatted as text; `row_classes` tags rows ('kept', 'bad', 'pending')."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    row_classes: tuple[str, ...] = ()
    numeric: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Figure:
    """A rendered PNG with its title and caption."""

    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Details:
    """A block collapsed by default (HTML <details>)."""

    summary: str
    blocks: tuple[Any, ...]


@dataclass(frozen=True)
class Section:
    """A titled part of the report; blocks are str paragraphs, Tables, Figures or Details."""

    id: str
    title: str
    blocks: tuple[Any, ...]


@dataclass(frozen=True)
class Document:
    """The whole report."""

    title: str
    status: str
    sections: tuple[Section, ...]


def three_decimals(v: float) -> str:
    """Three decimals; a non-zero value they would show as 0.000 with two significant digits
    (a small model's 0.00031 GOP)."""
    return f"{v:.2g}" if v and abs(v) < 0.0005 else f"{v:.3f}"


def integer(v: int) -> str:
    """An integer as shown in tables, with thousands separators (9,580), as every count
    prunewise prints has them."""
    return f"{v:,}"


def plain_table(
    headers: list[str], rows: list[list[Any]], floats: Callable[[float], str] = three_decimals
) -> Table:
    """A Table of raw values: floats by `floats` (3 decimals), ints by `integer`, None as a dash,
    the rest as str; a column is numeric (right-aligned) when it holds only numbers and Nones."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, int) and not isinstance(v, bool):
            return integer(v)
        return floats(v) if isinstance(v, float) else str(v)

    numeric = tuple(
        all(
            r[i] is None or (isinstance(r[i], int | float) and not isinstance(r[i], bool))
            for r in rows
        )
        for i in range(len(headers))
    )
    return Table(tuple(headers), tuple(tuple(cell(v) for v in r) for r in rows), (), numeric)
