"""The report of a `prunewise sparsify` folder: stages, sensitivity scans, storage, PE array."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunewise.errors import PrunewiseError
from prunewise.io import atomic_write_bytes, read_json
from prunewise.records import Scores
from prunewise.report.blocks import Document, Figure, Section, plain_table
from prunewise.report.html import build_report, render_html
from prunewise.report.markdown import render_markdown
from prunewise.report.plots import BAD_COLOR, OK_COLOR, _figure, _layer_ticks, _png

__all__ = [
    "build_folder_report",
    "build_sparsify_report",
    "pe_plot",
    "sensitivity_plot",
    "sparsify_document",
]


def _at(totals: dict[str, Any]) -> str:
    """At which sparsities the PE array compared the two (older records: the same)."""
    u, b = (totals[k].get("sparsity") for k in ("unstructured", "balanced"))
    if u is None or b is None or round(u, 3) == round(b, 3):
        return "at the same sparsity"
    return (
        f"(balanced at sparsity {b:.3f}, the job's masks at {u:.3f}: a balanced group keeps "
        "at least one weight, and a layer shorter than a group stays dense)"
    )


def sensitivity_plot(scans: list[Mapping[str, Any]]) -> bytes:
    """Accuracy of each layer pruned alone against its ratio (peak-pruning), peaks marked."""
    rounds = sorted({s["round"] for s in scans})
    fig = _figure(9.0, 3.2 * len(rounds))
    for i, r in enumerate(rounds):
        ax = fig.add_subplot(len(rounds), 1, i + 1)
        for s in (s for s in scans if s["round"] == r):
            pts = s["points"]
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1)
            if s.get("peak") is not None:
                ax.axvline(s["peak"], color=line.get_color(), lw=0.6, ls=":")
            ax.annotate(s["layer"], (pts[-1][0], pts[-1][1]), fontsize=7) if pts else None
        ax.set_title(f"round {r}: each layer pruned alone, no fine-tuning", fontsize=9)
        ax.set_xlabel("sparsity of the layer")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    return _png(fig)


def _scan_caption(settings: Mapping[str, Any]) -> str:
    """What a scan point's accuracy is measured on, from the job's settings."""
    n = settings.get("scan_images")
    images = "the validation split" if n is None else f"{n:,} validation images"
    bn = settings.get("bn_images", 0)
    stats = f"re-estimated on {bn:,} training images" if bn else "as trained"
    return f"Dotted: each layer's peak. Accuracy on {images}, BatchNorm statistics {stats}."


def pe_plot(pe: Mapping[str, Any]) -> bytes:
    """Modelled PE-array cycles per layer, unstructured vs balanced, relative to dense."""
    rows = pe["layers"]
    names = [r["name"] for r in rows]
    fig = _figure(max(6.0, 0.5 * len(names) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = range(len(names))
    for off, key, color in ((-0.2, "unstructured", BAD_COLOR), (0.2, "balanced", OK_COLOR)):
        vals = [r[key]["modelled"] / r[key]["dense"] if r[key]["dense"] else 0 for r in rows]
        ax.bar([i + off for i in x], vals, width=0.4, color=color, label=key)
    ideal = [1 - r["sparsity"] for r in rows]
    ax.plot(list(x), ideal, "k_", markersize=14, label="ideal (non-zeros / P)")
    _layer_ticks(ax, names)
    ax.set_ylabel("cycles / dense cycles")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def sparsify_document(
    config: Mapping[str, Any],
    record: Mapping[str, Any],
    storage: Mapping[str, Any],
    pe: Mapping[str, Any],
    *,
    figures: bool = True,
) -> Document:
    """The report of one sparsify job."""
    method = config["method"]
    base, final = Scores.from_dict(record["baseline"]), Scores.from_dict(record["final"])
    results = plain_table(
        ["model", "val acc %", "test acc %", "bytes"],
        [
            ["dense (fp32)", base.val_score, base.test_score, storage["dense_fp32_bytes"]],
            ["sparse, fine-tuned (fp32)", final.val_score, final.test_score, None],
            [
                f"stored ({config['settings']['values']} values)",
                None,
                Scores.from_dict(storage).test_score,
                storage["compressed_bytes"],
            ],
        ],
    )
    summary = (
        f"Method {method['method']}; overall sparsity {record.get('overall_sparsity', 0):.3f}; "
        f"compression {storage['ratio']:.1f}x (fp32 dense bytes / stored bytes; model.pws holds "
        f"the conv and linear weights, {storage['file_bytes']:,} bytes with its header, read "
        f"back {'bit-identical' if storage['read_back_exact'] else 'NOT identical'}; the "
        f"{storage['other_bytes']:,} fp32 bytes of the other parameters count in the stored "
        f"bytes and stay in model.pt); PE array "
        f"(P = {pe['array']['pes']}, g = {pe['array']['group']} along "
        f"{pe['array'].get('axis', 'in')}): balanced masks take "
        f"{1 / pe['balanced_over_unstructured']:.2f}x the cycles of this job's "
        f"{method['method']} masks {_at(pe['total'])}."
    )
    stages = plain_table(
        ["stage", "accuracy after pruning %", "after fine-tuning %"],
        [[s["label"], s.get("acc_pruned"), s.get("acc_finetuned")] for s in record["stages"]],
    )
    store = plain_table(
        ["layer", "shape", "sparsity", "format", "bytes", "fp32 dense bytes", "ratio"],
        [
            [r["name"], "x".join(map(str, r["shape"])), r["sparsity"], r["format"], r["bytes"],
             r["dense_fp32_bytes"], r["ratio"]]
            for r in storage["layers"]
        ],
    )  # fmt: skip
    pe_rows = [
        [r["name"], r["sparsity"], r["unstructured"]["dense"], r["unstructured"]["modelled"],
         r["balanced"]["modelled"], r["unstructured"]["utilisation"], r["balanced"]["utilisation"]]
        for r in pe["layers"]
    ]  # fmt: skip
    tot = pe["total"]
    pe_rows.append(
        ["total", None, tot["unstructured"]["dense"], tot["unstructured"]["modelled"],
         tot["balanced"]["modelled"], tot["unstructured"]["utilisation"],
         tot["balanced"]["utilisation"]]
    )  # fmt: skip
    pe_table = plain_table(
        [
            "layer",
            "sparsity",
            "dense cycles",
            "unstructured",
            "balanced",
            "util. unstr.",
            "util. bal.",
        ],
        pe_rows,
    )
    sections = [
        Section("results", "Results", (summary, results, stages)),
        Section("storage", "Sparse storage (smallest format per layer)", (store,)),
    ]
    pe_blocks: list[Any] = [
        "Each of P processing elements takes one group of g weights per step; a step lasts as long "
        "as its group with the most non-zeros. Balanced masks keep the same sparsity per layer.",
        pe_table,
    ]
    if figures:
        pe_blocks.insert(1, Figure("PE-array cycles", "Relative to dense.", pe_plot(pe)))
        if record.get("scans"):
            sections.insert(
                1,
                Section(
                    "scans",
                    "Sensitivity scans (peak-pruning)",
                    (
                        Figure(
                            "Sensitivity",
                            _scan_caption(config.get("settings", {})),
                            sensitivity_plot(record["scans"]),
                        ),
                    ),
                ),
            )
    sections.append(Section("pe-array", "Processing-element array model", tuple(pe_blocks)))
    return Document(f"prunewise sparsify: {method['method']}", "finished", tuple(sections))


def build_sparsify_report(out_dir: str | Path) -> Path:
    """Write report.html and report.md of a sparsify folder from its JSON files."""
    root = Path(out_dir)
    names = ("config.json", "sparsify.json", "storage.json", "pe_array.json")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise PrunewiseError(f"{root} is not a finished sparsify folder ({missing[0]} missing)")
    config, record, storage, pe = (read_json(root / n) for n in names)
    html = render_html(sparsify_document(config, record, storage, pe))
    path = atomic_write_bytes(root / "report.html", html.encode("utf-8"))
    md = render_markdown(sparsify_document(config, record, storage, pe, figures=False))
    atomic_write_bytes(root / "report.md", md.encode("utf-8"))
    return path


def build_folder_report(out_dir: str | Path) -> Path:
    """The report of a folder `prunewise run` or `prune_iteratively` wrote (`build_report`),
    or of one `prunewise sparsify` wrote (its config.json has the method and no model)."""
    root = Path(out_dir)
    try:
        config = read_json(root / "config.json")
    except PrunewiseError:
        config = None
    if isinstance(config, dict) and "method" in config and "model" not in config:
        return build_sparsify_report(root)
    return build_report(root)
