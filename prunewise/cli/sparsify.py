"""The `sparsify` sub-command: fine-grained pruning, sparse storage, PE-array model, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunewise.cli.common import add_data_args, add_model_args, load_model_and_data
from prunewise.cli.index import Command
from prunewise.pipeline.sparsify import SparsifySettings, check_sparsify_job, run_sparsify
from prunewise.prune.fine import SparsifyConfig
from prunewise.records import RunFolder, Scores, close_log, open_log
from prunewise.report import format_table
from prunewise.report.sparsify import build_sparsify_report
from prunewise.settings import add_setting
from prunewise.storage import read_compressed, read_toc

__all__ = ["COMMANDS"]


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got {text!r}") from exc
    return n, m


METHOD_FIELDS = ("method", "sparsity", "fc_sparsity", "scope", "group", "axis", "peak", "delta")
METHOD_FIELDS += ("max_rounds", "skip")
SETTING_FIELDS = ("finetune_epochs", "lr", "scan_images", "bn_images", "values", "codebook_bits")
SETTING_FIELDS += ("pes", "progress")


def _args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("method (docs/sparsify.md)")
    for name in METHOD_FIELDS:
        add_setting(g, SparsifyConfig, name)
    g.add_argument("--nm", type=_nm, default=(2, 4), metavar="N:M", help="nm: N of M (2:4)")
    s = p.add_argument_group("fine-tuning, storage, PE array")
    for name in SETTING_FIELDS:
        add_setting(s, SparsifySettings, name)
    p.add_argument("--out", required=True, metavar="DIR", help="the new sparsify folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the job in --out after its last finished step (same options)",
    )


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    method = SparsifyConfig(
        **{name: getattr(args, name) for name in METHOD_FIELDS}, n=args.nm[0], m=args.nm[1]
    )
    settings = SparsifySettings(
        **{name: getattr(args, name) for name in SETTING_FIELDS},
        batch_size=args.batch_size,
        group=args.group,
        seed=args.seed,
        device=args.device,
    )
    check_sparsify_job(out, method, settings, args.resume)
    loaded = load_model_and_data(args, augment=True)
    folder = RunFolder(out)
    with folder.lock():
        log = open_log(folder, main=True)
        try:
            result = run_sparsify(
                loaded.model,
                loaded.input_shape,
                loaded.data,
                method,
                settings,
                out,
                log,
                resume=args.resume,
            )
        except BaseException as exc:
            folder.mark_failed(exc)
            raise
        finally:
            close_log(log)
    rec, st, pe = result["sparsify"], result["storage"], result["pe_array"]
    base, final, stored = (Scores.from_dict(r) for r in (rec["baseline"], rec["final"], st))
    rows = [
        ["dense", base.test_score, st["dense_fp32_bytes"], 1.0],
        ["sparse (fp32)", final.test_score, None, None],
        [f"stored ({args.values})", stored.test_score, st["compressed_bytes"], st["ratio"]],
    ]
    print(format_table(["model", "test acc %", "bytes", "compression"], rows))
    print(
        f"\nPE array (P={args.pes}, g={args.group}): balanced "
        f"{pe['balanced_over_unstructured']:.2f}x faster than unstructured"
    )
    print(f"report: {build_sparsify_report(out)}")
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
