"""The Markdown version of a run's report: the same tables, no figures, no links."""

from __future__ import annotations

from typing import Any

from prunewise.report.document import Details, Document, Figure, Table

__all__ = ["render_markdown"]


def _text(text: str) -> str:
    """Text from the run folder as Markdown shows it, never as HTML a viewer would render."""
    return text.replace("<", "&lt;")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> str:
    numeric = t.numeric or (False,) * len(t.headers)
    align = ["---:" if i < len(numeric) and numeric[i] else "---" for i in range(len(t.headers))]
    lines = [
        "| " + " | ".join(_cell(h) for h in t.headers) + " |",
        "| " + " | ".join(align) + " |",
    ]
    for i, row in enumerate(t.rows):
        bold = i < len(t.row_classes) and t.row_classes[i] == "kept"
        cells = [f"**{_cell(c)}**" if bold and c != "–" else _cell(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _block(b: Any) -> str:
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return f"*Figure: {b.title} (in the HTML report).*"
    if isinstance(b, Details):
        return f"**{_text(b.summary)}**\n\n" + "\n\n".join(_block(x) for x in b.blocks)
    return _text(str(b))


def render_markdown(doc: Document) -> str:
    """The document as Markdown (tables only; the figures are in the HTML report)."""
    figures = "The figures are in the HTML report beside this file."
    parts = [f"# {_text(doc.title)}", _text(doc.status), figures]
    for s in doc.sections:
        parts.append(f"## {_text(s.title)}")
        parts += [_block(b) for b in s.blocks]
    return "\n\n".join(parts) + "\n"
