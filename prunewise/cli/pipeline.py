"""The sub-commands `run` (the whole iterative job) and `report` (rebuild a run's report)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prunewise.cli.common import SCHEME_HELP, round_to_arg
from prunewise.cli.index import Command
from prunewise.errors import PrunewiseError
from prunewise.pipeline import RunConfig, RunFolder, read_run_config, run_pipeline
from prunewise.pipeline.config import resolve_run_config, run_default, run_options
from prunewise.pipeline.job import RUN_JOB, check_job_folder
from prunewise.report import iterations_table
from prunewise.report.sparsify import build_folder_report
from prunewise.settings import add_setting
from prunewise.train import TrainConfig, init_distributed, shutdown_distributed

__all__ = ["COMMANDS", "OPTIONS", "resolve_config"]

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
OPTIONS = [o for o in run_options() if o[0] != "train.progress"]  # --no-progress: the run's own


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="TOML", help="options from a TOML file (see docs/run.md)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="the new run folder (default runs/NAME)")
    where.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    p.add_argument("--scheme", type=int, choices=(1, 2), default=None, help=SCHEME_HELP)
    add_setting(p, TrainConfig, "progress", dest="progress")  # on --resume too
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    groups: dict[str, Any] = {}
    for dest, cls, name in OPTIONS:
        section = dest.rpartition(".")[0]
        if section not in groups:
            groups[section] = p.add_argument_group(_TITLES.get(section, section))
        kw = {"parse": round_to_arg} if dest == "policy.round_to" else {}
        kw["shown"] = run_default(dest)
        add_setting(groups[section], cls, name, dest=dest, suppress=True, **kw)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Defaults < TOML file < command line (`resolve_run_config`)."""
    given = {dest: vars(args)[dest] for dest, _c, _n in OPTIONS if dest in vars(args)}
    if not args.progress:
        given["train.progress"] = False
    return resolve_run_config(args.config, given, args.scheme)


def _run_run(args: argparse.Namespace) -> int:
    if args.resume:
        given = [d for d, _c, _n in OPTIONS if d in vars(args) and d != "model.name"]
        if given or args.config or args.scheme:
            raise PrunewiseError(
                "--resume continues a run with its own config.json; drop the other options"
            )
        folder = RunFolder(Path(args.resume))
        check_job_folder(folder, RUN_JOB, resume=True)
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
            named_code=vars(args).get("model.name") if args.resume else None,
            dist=dist,
            report=not args.no_report,
            progress=False if not args.progress else None,
        )
    finally:
        shutdown_distributed(dist)
    if dist.is_main:
        print(iterations_table(result.summary))
        if result.report is not None:
            print(f"report: {result.report}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="a folder `prunewise run` or `sparsify` wrote")


def _report_run(args: argparse.Namespace) -> int:
    print(f"report: {build_folder_report(Path(args.run_dir))}")
    return 0


COMMANDS: dict[str, Command] = {
    "run": (_run_args, _run_run),
    "report": (_report_args, _report_run),
}
