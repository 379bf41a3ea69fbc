"""The sub-commands `run` (the whole iterative job) and `report` (rebuild a run's report)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunewise.cli.common import round_to_arg
from prunewise.cli.dpu import parse_threads
from prunewise.errors import PrunewiseError
from prunewise.io import overlay, read_json
from prunewise.pipeline import RunConfig, RunFolder, load_toml, merge_options, run_pipeline
from prunewise.prune import POLICIES, RefinedConfig
from prunewise.report import build_report, format_table
from prunewise.train import init_distributed, shutdown_distributed

__all__ = ["PIPELINE_COMMANDS", "options_from_args", "resolve_config"]

S = argparse.SUPPRESS

# (flags, dest as "section.field" or "field", kwargs); only given options reach the config.
_OPTIONS: tuple[tuple[tuple[str, ...], str, dict[str, Any]], ...] = (
    (("--model",), "model.name", {"metavar": "NAME", "help": "model (default vgg13_bn_small)"}),
    (
        ("--width",),
        "model.width",
        {
            "type": float,
            "help": "width multiplier (default 0.25 for the default model, else the model's own)",
        },
    ),
    (
        ("--baseline",),
        "model.baseline",
        {
            "metavar": "CKPT",
            "help": "start from this trained checkpoint instead of training a baseline",
        },
    ),
    (
        ("--dataset",),
        "data.name",
        {"help": "fashion-mnist (default), cifar10, cifar100, imagefolder, synthetic"},
    ),
    (("--data-dir",), "data.data_dir", {"metavar": "DIR", "help": "where the dataset lies"}),
    (
        ("--val-size",),
        "data.val_size",
        {"type": int, "help": "validation images held out of the training set (default 5000)"},
    ),
    (("--no-augment",), "data.augment", {"action": "store_false", "help": "no augmentation"}),
    (("--seed",), "train.seed", {"type": int, "help": "seed of splits, sampling and training"}),
    (("--alpha",), "policy.alpha", {"type": float, "help": "eq. 4 threshold in (0, 1]"}),
    (("--beta",), "policy.beta", {"type": float, "help": "eq. 4 multiplier in (0, 1]"}),
    (
        ("--policy",),
        "policy.policy",
        {"choices": sorted(POLICIES), "help": "eq4 (default) or continuous"},
    ),
    (
        ("--min-channels",),
        "policy.min_channels",
        {"type": int, "help": "never keep fewer (default 2)"},
    ),
    (
        ("--round-to",),
        "policy.round_to",
        {
            "type": round_to_arg,
            "help": "kept counts become multiples of N, or of a DPU size's / board's channel "
            "parallelism (B4096, zcu102: 16)",
        },
    ),
    (
        ("--reference-compat",),
        "policy.reference_compat",
        {"action": "store_true", "help": "remove floor(N*P)+1 as the authors"},
    ),
    (
        ("--min-sparsity",),
        "policy.min_sparsity",
        {"type": float, "help": "leave groups below this input sparsity"},
    ),
    (
        ("--prune-tied",),
        "policy.prune_tied",
        {"action": "store_true", "help": "also prune residual-tied groups, jointly"},
    ),
    (
        ("--epochs",),
        "train.epochs",
        {"type": int, "help": "baseline epochs (default 3; paper 100)"},
    ),
    (
        ("--finetune-epochs",),
        "finetune.epochs",
        {"type": int, "help": "fine-tune epochs per iteration (default 1; paper 50)"},
    ),
    (("--lr",), "train.lr", {"type": float, "help": "initial learning rate (default 0.01)"}),
    (("--lr-min",), "train.lr_min", {"type": float, "help": "final learning rate (1e-5)"}),
    (("--momentum",), "train.momentum", {"type": float, "help": "SGD momentum (0.9)"}),
    (("--no-nesterov",), "train.nesterov", {"action": "store_false", "help": "plain momentum"}),
    (("--weight-decay",), "train.weight_decay", {"type": float, "help": "default 1e-4"}),
    (("--batch-size",), "batch_size", {"type": int, "help": "default 128 (paper 20)"}),
    (("--device",), "train.device", {"help": "auto (CUDA when available), cpu, cuda[:N]"}),
    (
        ("--distill",),
        "finetune.teacher",
        {
            "choices": ("none", "baseline", "previous"),
            "help": "fine-tune with distillation from this teacher",
        },
    ),
    (("--temperature",), "finetune.temperature", {"type": float, "help": "distillation T (4)"}),
    (
        ("--distill-weight",),
        "finetune.weight",
        {"type": float, "help": "weight of the KL term (0.9; CE gets the rest)"},
    ),
    (
        ("--tolerance",),
        "tolerance",
        {
            "type": float,
            "help": "stop when val accuracy falls more "
            "than this many points below the baseline (1.5)",
        },
    ),
    (("--max-iterations",), "max_iterations", {"type": int, "help": "default 6"}),
    (
        ("--no-deploy",),
        "deploy.enabled",
        {"action": "store_false", "help": "skip the deploy stage (INT8, ONNX, latency)"},
    ),
    (
        ("--calibration",),
        "deploy.int8.calibration",
        {
            "choices": ("minmax", "percentile", "mse"),
            "help": "INT8 activation calibration (default percentile)",
        },
    ),
    (
        ("--calibration-images",),
        "deploy.int8.calibration_images",
        {"type": int, "help": "validation images to calibrate INT8 on (default 256)"},
    ),
    (
        ("--power-of-two",),
        "deploy.int8.power_of_two",
        {"action": "store_true", "help": "INT8 scales 2^-k, symmetric (DPU rules)"},
    ),
    (
        ("--weight-bits",),
        "deploy.int8.weight_bits",
        {"type": int, "help": "INT8 weight code bits (default 7; 8 with --power-of-two)"},
    ),
    (
        ("--no-latency",),
        "deploy.measure_latency",
        {"action": "store_false", "help": "deploy without timing ONNX Runtime"},
    ),
    (
        ("--no-dpu",),
        "dpu.enabled",
        {"action": "store_false", "help": "leave the DPU model out of the run"},
    ),
    (("--board",), "dpu.board", {"help": "board the DPU model runs on (default zcu102)"}),
    (
        ("--dpu-threads",),
        "dpu.threads",
        {"type": parse_threads, "help": "thread counts of the DPU fps (default 1,2)"},
    ),
    (
        ("--images",),
        "analysis_images",
        {"type": int, "help": "images to measure sparsity on (default 100; 1 = the paper)"},
    ),
    (
        ("--group-experiment",),
        "group_experiment",
        {"type": int, "metavar": "G", "help": "groups of paper A fig. 20 (50; 0 = skip)"},
    ),
)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="TOML", help="options from a TOML file (see docs/run.md)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="the new run folder (default runs/NAME)")
    where.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    p.add_argument(
        "--scheme",
        type=int,
        choices=(1, 2),
        default=None,
        help="paper A preset: 1 = alpha=beta=0.5 (default), 2 = alpha=beta=1",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    for flags, dest, kwargs in _OPTIONS:
        p.add_argument(*flags, dest=dest, default=S, **kwargs)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Nested options given on the command line (only those given)."""
    out: dict[str, Any] = {}
    for _flags, dest, _kw in _OPTIONS:
        if dest in vars(args):
            *sections, key = dest.split(".")
            table = out
            for section in sections:
                table = table.setdefault(section, {})
            table[key] = vars(args)[dest]
    if args.scheme is not None:
        preset = RefinedConfig.scheme(args.scheme)
        pol = out.setdefault("policy", {})
        pol.setdefault("alpha", preset.alpha)
        pol.setdefault("beta", preset.beta)
    if args.no_progress:
        out.setdefault("train", {})["progress"] = False
    return out


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Defaults < TOML file < command line; a changed model name drops the default width."""
    file_opts = load_toml(args.config) if args.config else {}
    cli_opts = options_from_args(args)
    merged = merge_options(file_opts, cli_opts)
    model = merged.get("model", {})
    if "name" in model and "width" not in model:
        model["width"] = None
    defaults = RunConfig().to_dict()
    full = overlay({k: v for k, v in defaults.items() if k != "format"}, merged)
    return RunConfig.from_dict(full)


def _run_run(args: argparse.Namespace) -> int:
    if args.resume:
        given = [d for _f, d, _k in _OPTIONS if d in vars(args)]
        if given or args.config or args.scheme:
            raise PrunewiseError(
                "--resume continues a run with its own config.json; drop the other options"
            )
        folder = RunFolder(Path(args.resume))
        folder.check_existing()
        config, out = RunConfig.from_dict(read_json(folder.config)), folder.root
    else:
        config = resolve_config(args)
        out = Path(args.out or f"runs/{config.model.name}_{config.data.name}")
    dist = init_distributed(config.train.device)
    try:
        result = run_pipeline(
            config,
            out,
            resume=bool(args.resume),
            dist=dist,
            report=not args.no_report,
            progress=False if args.no_progress else None,
        )
    finally:
        shutdown_distributed(dist)
    if dist.is_main:
        _print_summary(result.summary)
        if result.report is not None:
            print(f"report: {result.report}")
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    base = summary["baseline"]
    rows = [[0, base["params"], base["flops"], "-", "-", base["val_acc"], base["test_acc"], ""]]
    for r in summary["iterations"]:
        rows.append(
            [
                r["iteration"],
                r["params"],
                r["flops"],
                f"{100 * r['params_reduction']:.1f} %",
                f"{100 * r['flops_reduction']:.1f} %",
                r["val_acc"],
                r["test_acc"],
                "kept" if r["iteration"] == summary["kept"] else "",
            ]
        )
    if summary["kept"] == 0:
        rows[0][-1] = "kept"
    headers = ["iter", "params", "FLOPs", "params -", "FLOPs -", "val %", "test %", ""]
    print(format_table(headers, rows, title=f"Iterations (stopped: {summary['stopped']})"))


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `prunewise run`")


def _report_run(args: argparse.Namespace) -> int:
    print(f"report: {build_report(Path(args.run_dir))}")
    return 0


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

PIPELINE_COMMANDS: dict[str, Command] = {
    "run": (
        "the whole job: baseline, then measure -> prune -> fine-tune until accuracy drops, report",
        _run_args,
        _run_run,
    ),
    "report": ("rebuild report.html of a run folder from its files", _report_args, _report_run),
}
