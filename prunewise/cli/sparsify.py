"""The `sparsify` sub-command: fine-grained pruning, sparse storage, PE-array model, report."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from prunewise.cli.common import add_data_args, add_model_args, load_model_and_data
from prunewise.pipeline.folder import RunFolder, close_log, open_log
from prunewise.pipeline.sparsify import SparsifySettings, check_sparsify_folder, run_sparsify
from prunewise.prune.fine import METHODS, SparsifyConfig
from prunewise.report import format_table
from prunewise.report.sparsify import build_sparsify_report
from prunewise.storage import read_compressed, read_toc

__all__ = ["SPARSIFY_COMMANDS"]


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got {text!r}") from exc
    return n, m


def _args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("method (docs/sparsify.md)")
    g.add_argument("--method", choices=METHODS, default="magnitude", help="default magnitude")
    g.add_argument("--sparsity", type=float, default=0.8, help="ratio per layer, [0, 1) (0.8)")
    g.add_argument("--fc-sparsity", type=float, default=None, help="ratio of linear layers")
    g.add_argument(
        "--scope", choices=("layer", "global"), default="layer", help="magnitude: layer|global"
    )
    g.add_argument("--group", type=int, default=16, help="balanced: group size g (16)")
    g.add_argument("--axis", choices=("in", "out", "flat"), default="in", help="group axis (in)")
    g.add_argument("--nm", type=_nm, default=(2, 4), metavar="N:M", help="nm: N of M (2:4)")
    g.add_argument("--peak", action="store_true", help="reversed: prune each layer to its peak")
    g.add_argument("--delta", type=float, default=0.5, help="peak: allowed drop, points (0.5)")
    g.add_argument("--max-rounds", type=int, default=3, help="peak: scan rounds (3)")
    g.add_argument("--skip", default="", metavar="LAYERS", help="comma-separated layers to keep")
    s = p.add_argument_group("fine-tuning, storage, PE array")
    s.add_argument("--finetune-epochs", type=int, default=1, help="per stage (default 1)")
    s.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate (0.01)")
    s.add_argument(
        "--scan-images",
        type=int,
        default=None,
        metavar="N",
        help="validation images for scans (default: the whole validation split)",
    )
    s.add_argument(
        "--bn-images",
        type=int,
        default=1024,
        metavar="N",
        help="re-estimate BatchNorm statistics on N training images before every accuracy the "
        "method measures (scans, stages); 0: off (1024)",
    )
    s.add_argument(
        "--values",
        choices=("fp32", "int8", "codebook"),
        default="int8",
        help="stored weight values (default int8)",
    )
    s.add_argument("--codebook-bits", type=int, default=5, help="codebook: q bits (5)")
    s.add_argument("--pes", type=int, default=16, help="PE-array model: P elements (16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, metavar="DIR", help="the new sparsify folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the job in --out after its last finished step (same options)",
    )


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_sparsify_folder(out, args.resume)
    method = SparsifyConfig(
        method=args.method,
        sparsity=args.sparsity,
        fc_sparsity=args.fc_sparsity,
        scope=args.scope,
        group=args.group,
        axis=args.axis,
        n=args.nm[0],
        m=args.nm[1],
        peak=args.peak,
        delta=args.delta,
        max_rounds=args.max_rounds,
        skip=tuple(s for s in args.skip.split(",") if s),
    )
    settings = SparsifySettings(
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        scan_images=args.scan_images,
        bn_images=args.bn_images,
        batch_size=args.batch_size,
        values=args.values,
        codebook_bits=args.codebook_bits,
        pes=args.pes,
        group=args.group,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    loaded = load_model_and_data(args, augment=True)
    log = open_log(RunFolder(out), main=True)
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
    finally:
        close_log(log)
    rec, st, pe = result["sparsify"], result["storage"], result["pe_array"]
    rows = [
        ["dense", rec["baseline"]["test_acc"], st["dense_fp32_bytes"], 1.0],
        ["sparse (fp32)", rec["final"]["test_acc"], None, None],
        [f"stored ({args.values})", st["test_acc"], st["compressed_bytes"], st["ratio"]],
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


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
SPARSIFY_COMMANDS: dict[str, Command] = {
    "sparsify": (
        "fine-grained pruning (magnitude, reversed, peak, balanced, N:M) with fine-tuning, "
        "sparse storage with exact bytes, PE-array model, report",
        _args,
        _run,
    ),
    "inspect-sparse": (
        "read a compressed model file (model.pws) back: formats, bytes, non-zeros",
        _inspect_args,
        _inspect_run,
    ),
}
