"""`prunewise dpu` (per-subgraph DPU profile and fps) and `prunewise dpu-fit` (calibration)."""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunewise.cli.common import parse_input_size
from prunewise.cli.index import Command
from prunewise.errors import PrunewiseError
from prunewise.hw.dpu import REFERENCE_CSV
from prunewise.hw.dpu.config import DPUConfig, load_devices
from prunewise.hw.dpu.fit import fit_calibration, leave_one_out, read_reference, reference_ops
from prunewise.hw.dpu.summary import dpu_summary
from prunewise.io import atomic_write_bytes, atomic_write_json, load_checkpoint
from prunewise.models import model_info
from prunewise.models.sources import build_from_source, parse_source
from prunewise.pipeline.config import ModelSpec
from prunewise.report import format_table
from prunewise.report.dpu import (
    COMPARE_HEADERS,
    FPS_HEADERS,
    SUBGRAPH_HEADERS,
    dpu_compare_rows,
    dpu_fps_rows,
    dpu_plot,
    dpu_subgraph_rows,
)
from prunewise.settings import add_setting, spec_of

__all__ = ["COMMANDS"]


def _board_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device (docs/dpu.md)")
    for name in ("board", "arch", "devices"):
        add_setting(g, DPUConfig, name)
    add_setting(g, DPUConfig, "threads", aliases=("--threads",))


def _args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", metavar="CKPT", help="a prunewise checkpoint")
    g.add_argument(
        "--model", metavar="SOURCE", help=f"{spec_of(ModelSpec, 'name').help}, built untrained"
    )
    g.add_argument("--width", type=float, default=None, help="width of prunewise models")
    add_setting(g, ModelSpec, "args", dest="model_args")
    g.add_argument("--num-classes", type=int, default=None, help="of --model (1000 tv / 10)")
    g.add_argument(
        "--input-size",
        default=None,
        metavar="C,H,W",
        help="input shape (default: the checkpoint's; 3,224,224 torchvision; 1,32,32 others)",
    )
    g.add_argument("--compare", metavar="CKPT", help="a second model (pruned): table 13")
    _board_args(p)
    p.add_argument("--plot", metavar="PNG", help="write the five-index plot (figs. 25-26)")
    p.add_argument("--json", metavar="FILE", help="write the profiles as JSON")


def _model(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...], str]:
    requested = parse_input_size(args.input_size)
    if args.checkpoint and args.model:
        raise PrunewiseError("give --checkpoint or --model, not both")
    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        return ck.model, requested or ck.input_shape, _label(args.checkpoint)
    name = args.model or "vgg13_bn_small"
    source = parse_source(name)
    tv = source.kind in ("torchvision", "timm") or (
        source.kind == "registry" and model_info(name).source == "torchvision"
    )
    shape = requested or ((3, 224, 224) if tv else (1, 32, 32))  # as Fashion-MNIST loads
    classes = args.num_classes or (1000 if tv else 10)
    with torch.device("meta"):  # shapes only: no weights needed, nothing allocated
        model = build_from_source(
            source,
            num_classes=classes,
            in_channels=shape[0],
            width=args.width,
            model_args=args.model_args,
        )
    return model.eval(), shape, name


def _label(path: str) -> str:
    """A checkpoint's name in tables: its folder and file (baseline/model.pt)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _run(args: argparse.Namespace) -> int:
    config = DPUConfig(board=args.board, arch=args.arch, threads=args.threads, devices=args.devices)
    threads = config.threads
    board = config.resolve()
    model, shape, label = _model(args)
    summaries: dict[str, dict[str, Any]] = {label: dpu_summary(model, shape, board, threads)}
    if args.compare:
        ck = load_checkpoint(args.compare)
        other = _label(args.compare)
        if other == label:
            other = str(args.compare)
        summaries[other] = dpu_summary(ck.model, ck.input_shape, board, threads)
    for name, s in summaries.items():
        print(format_table(SUBGRAPH_HEADERS, dpu_subgraph_rows(s), title=f"{name} on {board.name}"))
        if s["cpu_fallback"]:
            print(f"runs on the host CPU, not the DPU: {', '.join(s['cpu_fallback'])}")
        print()
    if len(summaries) == 2:
        a, b = summaries.values()
        print(format_table(COMPARE_HEADERS, dpu_compare_rows(a, b), title="per subgraph"))
        print()
    print(format_table(FPS_HEADERS, dpu_fps_rows(summaries), title=f"fps on {board.name}"))
    if args.plot:
        atomic_write_bytes(args.plot, dpu_plot(summaries))
        print(f"plot: {args.plot}")
    if args.json:
        atomic_write_json(args.json, summaries)
        print(f"json: {args.json}")
    return 0


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        default=str(REFERENCE_CSV),
        metavar="CSV",
        help="published fps per torchvision model and board (default: the built-in copy)",
    )
    p.add_argument("--devices", default=None, metavar="TOML", help="a devices file to lay over")
    p.add_argument("--write", metavar="TOML", help="write the constants fitted on all rows")
    p.add_argument("--json", metavar="FILE", help="write the leave-one-out scores as JSON")


def _where(reference: str) -> str:
    """The reference file as the JSON records it (the built-in copy by its package path)."""
    if Path(reference).resolve() == REFERENCE_CSV.resolve():
        return "prunewise/hw/dpu/dpu_reference.csv (built in)"
    return reference


def _fit_run(args: argparse.Namespace) -> int:
    devices = load_devices(args.devices)
    refs = read_reference(args.reference)
    names = sorted({b for r in refs for b, _ in r.fps})
    boards = {n: devices.board(n) for n in names}
    cases = [(r, reference_ops(r)) for r in refs]
    scored = leave_one_out(cases, boards)
    rows = [[s.model, s.board, s.mode, s.measured, s.predicted, 100 * s.error] for s in scored]
    print(format_table(["held-out model", "board", "threads", "published fps", "modelled fps",
                        "error %"], rows, title="leave-one-model-out"))  # fmt: skip
    summary = []
    for board in boards:
        for mode in ("1t", "mt"):
            errs = [abs(s.error) for s in scored if s.board == board and s.mode == mode]
            if errs:
                summary.append([board, mode, 100 * statistics.median(errs), 100 * max(errs)])
    print()
    print(format_table(["board", "threads", "median |error| %", "worst |error| %"], summary))
    cal = fit_calibration(cases, boards)
    lines = [f"{k} = {v!r}" for k, v in cal.__dict__.items() if k != "source"]
    text = "[calibration]\n" + "\n".join(lines) + f'\nsource = "{cal.source}"\n'
    print("\nconstants fitted on all rows:\n" + text)
    if args.write:
        atomic_write_bytes(args.write, text.encode())
        print(f"wrote {args.write} (use it with --devices)")
    if args.json:
        atomic_write_json(
            args.json,
            {"command": "prunewise " + " ".join(sys.argv[1:]), "reference": _where(args.reference),
             "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
             "scored": [{**s.__dict__, "error": s.error} for s in scored],
             "summary": [dict(zip(("board", "threads", "median_pct", "worst_pct"), r,
                                  strict=True)) for r in summary],
             "calibration": cal.__dict__},
        )  # fmt: skip
    return 0


COMMANDS: dict[str, Command] = {
    "dpu": (_args, _run),
    "dpu-fit": (_fit_args, _fit_run),
}
