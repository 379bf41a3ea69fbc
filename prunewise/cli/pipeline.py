"""The sub-commands `run` (the whole iterative job) and `report` (rebuild a run's report)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from prunewise.cli.common import round_to_arg
from prunewise.cli.index import Command
from prunewise.errors import PrunewiseError
from prunewise.io import overlay
from prunewise.pipeline import (
    RunConfig,
    RunFolder,
    load_toml,
    merge_options,
    read_run_config,
    run_pipeline,
)
from prunewise.prune import RefinedConfig
from prunewise.records import Summary
from prunewise.report import build_report, format_table
from prunewise.settings import add_setting
from prunewise.train import TrainConfig, init_distributed, shutdown_distributed

__all__ = ["COMMANDS", "OPTIONS", "options_from_args", "resolve_config"]

_TITLES = {
    "": "run",
    "model": "model [model]",
    "data": "data [data]",
    "policy": "pruning policy, paper A eq. 4 [policy]",
    "train": "baseline training [train]",
    "finetune": "fine-tuning after each step [finetune]",
    "deploy": "deploy stage [deploy]",
    "deploy.int8": "INT8 quantization [deploy.int8]",
    "deploy.latency": "ONNX Runtime latency [deploy.latency]",
    "dpu": "DPU model [dpu]",
}
_SPECIAL = {"train.progress"}  # --no-progress is the run's own (it applies on --resume too)


def _run_options(cls: type = RunConfig, where: str = "") -> list[tuple[str, type, str]]:
    """(dest 'section.field', config class, field) of every run setting with a flag."""
    out: list[tuple[str, type, str]] = []
    for f in fields(cls):
        dest = f"{where}.{f.name}" if where else f.name
        if f.metadata.get("nested"):
            out += _run_options(type(f.default_factory()), dest)
        elif "spec" in f.metadata and f.metadata["spec"].flag and dest not in _SPECIAL:
            out.append((dest, cls, f.name))
    return out


OPTIONS = _run_options()


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
    add_setting(p, TrainConfig, "progress", dest="progress")  # on --resume too
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    groups: dict[str, Any] = {}
    for dest, cls, name in OPTIONS:
        section = dest.rpartition(".")[0]
        if section not in groups:
            groups[section] = p.add_argument_group(_TITLES.get(section, section))
        parse = round_to_arg if dest == "policy.round_to" else None
        add_setting(groups[section], cls, name, dest=dest, suppress=True, parse=parse)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Nested options given on the command line (only those given)."""
    out: dict[str, Any] = {}
    for dest, _cls, _name in OPTIONS:
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
    if not args.progress:
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
        given = [d for d, _c, _n in OPTIONS if d in vars(args)]
        if given or args.config or args.scheme:
            raise PrunewiseError(
                "--resume continues a run with its own config.json; drop the other options"
            )
        folder = RunFolder(Path(args.resume))
        folder.check_existing()
        config, out = read_run_config(folder.config), folder.root
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
            progress=False if not args.progress else None,
        )
    finally:
        shutdown_distributed(dist)
    if dist.is_main:
        _print_summary(result.summary)
        if result.report is not None:
            print(f"report: {result.report}")
    return 0


def _print_summary(summary: Summary) -> None:
    rows = []
    for r in summary.stages:
        s = r.scores
        first = r.iteration == 0
        rows.append(
            [
                r.iteration,
                s.params,
                s.flops,
                "-" if first else f"{100 * (r.params_reduction or 0.0):.1f} %",
                "-" if first else f"{100 * (r.flops_reduction or 0.0):.1f} %",
                s.val_score,
                s.test_score,
                "kept" if r.iteration == summary.kept else "",
            ]
        )
    metric = "" if summary.metric == "accuracy" else f" {summary.metric}"
    headers = ["iter", "params", "FLOPs", "params -", "FLOPs -"]
    headers += [f"val{metric} {summary.unit}".rstrip(), f"test{metric} {summary.unit}".rstrip(), ""]
    print(format_table(headers, rows, title=f"Iterations (stopped: {summary.stopped})"))


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `prunewise run`")


def _report_run(args: argparse.Namespace) -> int:
    print(f"report: {build_report(Path(args.run_dir))}")
    return 0


COMMANDS: dict[str, Command] = {
    "run": (_run_args, _run_run),
    "report": (_report_args, _report_run),
}
