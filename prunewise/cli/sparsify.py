"""The `sparsify` sub-command: fine-grained pruning, sparse storage, PE-array model, report."""

from __future__ import annotations

import argparse

from prunewise.cli.common import add_inputs_args, load
from prunewise.cli.index import Command
from prunewise.pipeline.sparsify import SparsifySettings, check_sparsify_job, run_sparsify
from prunewise.prune.fine import SparsifyConfig
from prunewise.records import Scores
from prunewise.report import format_table
from prunewise.report.sparsify import build_sparsify_report
from prunewise.settings import add_settings
from prunewise.storage import read_compressed, read_toc

__all__ = ["COMMANDS"]


def _nm(text: str) -> dict[str, int]:
    try:
        return dict(zip("nm", map(int, text.split(":")), strict=True))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got {text!r}") from exc


METHOD_FIELDS = ("method", "sparsity", "fc_sparsity", "scope", "group", "axis", "peak", "delta")
METHOD_FIELDS += ("max_rounds", "skip")
SETTING_FIELDS = ("finetune_epochs", "lr", "scan_images", "bn_images", "values", "codebook_bits")
SETTING_FIELDS += ("pes", "progress")


def _args(p: argparse.ArgumentParser) -> None:
    add_inputs_args(p, trains=True)
    add_settings(p, SparsifyConfig, METHOD_FIELDS, title="method (docs/sparsify.md)", suppress=True)
    p.add_argument(
        "--nm", type=_nm, default=argparse.SUPPRESS, metavar="N:M", help="nm: N of M (2:4)"
    )
    add_settings(p, SparsifySettings, SETTING_FIELDS, title="fine-tuning, storage, PE array",
                 suppress=True)  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="the new sparsify folder")
    p.add_argument("--resume", action="store_true", help="continue the job in --out (same options)")


def _run(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in METHOD_FIELDS} | getattr(args, "nm", {})
    method = SparsifyConfig.from_given(given)
    settings = SparsifySettings.from_given({k: vars(args)[k] for k in SETTING_FIELDS if k in args})
    check_sparsify_job(args.out, method, settings, args.resume)  # before the data load
    _, loaded = load(args, augment=True)
    result = run_sparsify(loaded.model, loaded.input_shape, loaded.data, method, settings,
                          args.out, resume=args.resume)  # fmt: skip
    rec, st, pe = result["sparsify"], result["storage"], result["pe_array"]
    base, final, stored = (Scores.from_dict(r) for r in (rec["baseline"], rec["final"], st))
    rows = [
        ["dense", base.test_score, st["dense_fp32_bytes"], 1.0],
        ["sparse (fp32)", final.test_score, None, None],
        [f"stored ({settings.values})", stored.test_score, st["compressed_bytes"], st["ratio"]],
    ]
    print(format_table(["model", "test acc %", "bytes", "compression"], rows))
    speed, a = pe["balanced_over_unstructured"], pe["array"]
    print(f"\nPE array (P={a['pes']}, g={a['group']}, {a['axis']}): balanced takes {1 / speed:.2f}x"
          f" the job's cycles\nreport: {build_sparsify_report(args.out)}")  # fmt: skip
    return 0


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a compressed model (model.pws) to read back")


def _inspect_run(args: argparse.Namespace) -> int:
    toc = read_toc(args.file)
    tensors = read_compressed(args.file)  # decodes every payload and checks its checksum
    rows = [
        [e.name, "x".join(map(str, e.shape)), e.spec.label, e.length,
         int((tensors[e.name] != 0).sum())]
        for e in toc.entries
    ]  # fmt: skip
    print(format_table(["tensor", "shape", "format", "bytes", "non-zeros"], rows))
    payload = sum(e.length for e in toc.entries)
    print(f"\nheader {toc.header_bytes:,} bytes + payloads {payload:,} bytes; all decoded")
    return 0


COMMANDS: dict[str, Command] = {
    "sparsify": (_args, _run),
    "inspect-sparse": (_inspect_args, _inspect_run),
}
