"""The self-contained HTML report of a run folder (PNG figures embedded, inline CSS, no JS)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from prunewise.io import atomic_write_bytes
from prunewise.report.document import Details, Document, Figure, Table, build_document
from prunewise.report.markdown import render_markdown
from prunewise.report.run import load_run

__all__ = ["build_report", "render_html"]

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #222; margin: 0; background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 1.5em 2em 4em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
p.status { font-size: 1.05em; background: #eef4fb; padding: 0.5em 0.8em; border-radius: 4px; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.kept td { background: #e3f5e1; font-weight: 600; }
tr.bad td { color: #b71c1c; }
tr.pending td { color: #777; font-style: italic; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #555; }
details { margin: 0.5em 0; }
summary { cursor: pointer; color: #1f4e79; }
.scroll { overflow-x: auto; }
"""


def _table(t: Table) -> str:
    numeric = t.numeric or (False,) * len(t.headers)
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = []
    for i, row in enumerate(t.rows):
        cls = t.row_classes[i] if i < len(t.row_classes) and t.row_classes[i] else ""
        cells = "".join(
            f'<td class="num">{escape(c)}</td>'
            if j < len(numeric) and numeric[j]
            else f"<td>{escape(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(f.title)}">'
        f"<figcaption><b>{escape(f.title)}.</b> {escape(f.caption)}</figcaption></figure>"
    )


def _block(b: Any) -> str:
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return _figure(b)
    if isinstance(b, Details):
        inner = "\n".join(_block(x) for x in b.blocks)
        return f"<details><summary>{escape(b.summary)}</summary>\n{inner}\n</details>"
    return f"<p>{escape(str(b))}</p>"


def render_html(doc: Document) -> str:
    """The document as one self-contained HTML page."""
    nav = " ".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in doc.sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title><style>{CSS}</style></head>",
        "<body><main>",
        f"<h1>{escape(doc.title)}</h1>",
        f'<p class="status">{escape(doc.status)}</p>',
        f"<nav>{nav}</nav>",
    ]
    for s in doc.sections:
        parts.append(f'<section id="{escape(s.id)}"><h2>{escape(s.title)}</h2>')
        parts += [_block(b) for b in s.blocks]
        parts.append("</section>")
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def build_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (and report.md) from the run folder alone; the HTML's path."""
    run = load_run(run_dir)
    html_path = atomic_write_bytes(
        run.root / "report.html", render_html(build_document(run)).encode("utf-8")
    )
    markdown = render_markdown(build_document(run, figures=False))
    atomic_write_bytes(run.root / "report.md", markdown.encode("utf-8"))
    return html_path
