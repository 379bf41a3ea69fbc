"""`prunewise dpu` (per-subgraph DPU profile and fps) and `prunewise dpu-fit` (calibration)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from torch import nn

from prunewise.cli.index import Command
from prunewise.hw.dpu import REFERENCE_CSV
from prunewise.hw.dpu.config import DPUConfig, load_devices
from prunewise.hw.dpu.fit import PRUNED_CSV, fit_report
from prunewise.hw.dpu.summary import dpu_summary, training_form_warning
from prunewise.io import atomic_write_bytes, atomic_write_json, check_writable, load_checkpoint
from prunewise.models.bring import shapes_only
from prunewise.pipeline.inputs import DEFAULT_MODEL, InputsConfig
from prunewise.report.dpu import dpu_plot, dpu_text, fit_text
from prunewise.settings import add_setting, add_settings, settings_from_args

__all__ = ["COMMANDS"]


def _args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (built on the meta device: shapes only)")
    for name in ("checkpoint", "model", "width", "model_args"):
        add_setting(g, InputsConfig, name)
    size = add_setting(g, InputsConfig, "input_size")
    size.help = "model input shape (unset: the checkpoint's, else 3,224,224 for torchvision "
    size.help += "and timm models, 1,32,32 for the others)"
    g.add_argument("--num-classes", type=int, default=None, help="of --model (1000 tv / 10)")
    g.add_argument("--compare", metavar="CKPT", help="a second model (pruned): table 13")
    add_settings(p, DPUConfig, ("board", "arch", "devices"), title="device (docs/dpu.md)")
    add_setting(p, DPUConfig, "threads", aliases=("--threads",))
    p.add_argument("--plot", metavar="PNG", help="write the five-index plot (figs. 25-26)")
    p.add_argument("--json", metavar="FILE", help="write the profiles as JSON")


def _model(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...], str]:
    given = settings_from_args(InputsConfig, args)  # checked: not --checkpoint and --model
    if given.checkpoint:
        ck = load_checkpoint(given.checkpoint)
        return ck.model, given.input_size or ck.input_shape, _label(given.checkpoint)
    name = given.model or DEFAULT_MODEL
    model, shape = shapes_only(
        name,
        input_shape=given.input_size,
        num_classes=args.num_classes,
        width=given.width,
        model_args=given.model_args,
    )
    return model, shape, name


def _label(path: str) -> str:
    """A checkpoint's name in tables: its folder and file (baseline/model.pt)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _run(args: argparse.Namespace) -> int:
    check_writable(args.plot, args.json, files=True)  # before the work
    config = settings_from_args(DPUConfig, args)
    threads = config.threads
    board = config.resolve()
    model, shape, label = _model(args)
    summaries = {label: dpu_summary(model, shape, board, threads)}
    if warning := training_form_warning(model):
        print(f"warning: {warning}", file=sys.stderr)
    if args.compare:
        ck = load_checkpoint(args.compare)
        other = _label(args.compare) if _label(args.compare) != label else str(args.compare)
        summaries[other] = dpu_summary(ck.model, ck.input_shape, board, threads)
    print(dpu_text(summaries, board.name))
    if args.plot:
        atomic_write_bytes(args.plot, dpu_plot(summaries))
        print(f"plot: {args.plot}")
    if args.json:
        atomic_write_json(args.json, {k: s.to_dict() for k, s in summaries.items()})
        print(f"json: {args.json}")
    return 0


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        action="append",
        metavar="CSV",
        help="published fps per torchvision model and board; repeat for several files (default: "
        "the built-in unpruned and pruned files); every row is fitted and left out in turn, "
        "except rows whose model has host ops (predicted only)",
    )
    p.add_argument(
        "--validation",
        action="append",
        metavar="CSV",
        help="published fps never fitted on, predicted with the fit on all reference rows "
        "(repeatable; default: none)",
    )
    p.add_argument("--devices", default=None, metavar="TOML", help="a devices file to lay over")
    p.add_argument("--write", metavar="TOML", help="write the constants fitted on all rows")
    p.add_argument("--json", metavar="FILE", help="write the leave-one-out scores as JSON")


def _fit_run(args: argparse.Namespace) -> int:
    check_writable(args.write, args.json, files=True)  # before the fit
    reference = args.reference or [str(REFERENCE_CSV), str(PRUNED_CSV)]
    fit = fit_report(reference, load_devices(args.devices).board, args.validation)
    print(fit_text(fit))
    if args.write:
        atomic_write_bytes(args.write, fit.calibration_toml().encode())
        print(f"wrote {args.write} (use it with --devices)")
    if args.json:
        when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        head = {"command": "prunewise " + " ".join(sys.argv[1:]), "date_utc": when}
        atomic_write_json(args.json, {**head, **fit.to_dict()})
    return 0


COMMANDS: dict[str, Command] = {
    "dpu": (_args, _run),
    "dpu-fit": (_fit_args, _fit_run),
}
