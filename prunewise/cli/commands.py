"""The sub-commands: models, train, evaluate, analyze, prune."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prunewise.cli.common import add_inputs_args, add_policy_args, load, policy_config
from prunewise.cli.index import Command
from prunewise.io import atomic_write_json
from prunewise.models import list_models
from prunewise.pipeline.step import StepAnalysis, analyse_step, prune_step, train_step
from prunewise.prune import PruningPlan
from prunewise.records import epoch_score
from prunewise.report import format_table, group_rows, layer_rows, summary_rows
from prunewise.settings import add_settings, settings_from_args
from prunewise.train import TrainConfig, TrainState

__all__ = ["COMMANDS"]


def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        choices=("all", "prunewise", "torchvision"),
        default="all",
        help="which models to list (default all)",
    )


def _models_run(args: argparse.Namespace) -> int:
    infos = [i for i in list_models() if args.source in ("all", i.source)]
    rows = [[i.name, i.source, i.family, i.description] for i in infos]
    print(format_table(["name", "source", "family", "description"], rows))
    return 0


TRAIN_FIELDS = ("epochs", "lr", "lr_min", "momentum", "nesterov", "weight_decay", "slimming")
TRAIN_FIELDS += ("progress",)


def _train_args(p: argparse.ArgumentParser) -> None:
    add_inputs_args(p, trains=True)
    add_settings(p, TrainConfig, TRAIN_FIELDS, title="training (paper A: SGD, Nesterov, cosine)")
    p.add_argument("--out", required=True, metavar="CKPT", help="where to write the checkpoint")


def _train_run(args: argparse.Namespace) -> int:
    inputs, loaded = load(args, augment=True)
    config = settings_from_args(TrainConfig, args)

    def report(state: TrainState) -> None:
        n, m = state.epochs_done, state.history[-1]
        print(f"epoch {n}/{config.epochs}: loss {m['loss']:.4f}, val acc {epoch_score(m):.2f} %")

    scores = train_step(loaded, inputs, config, args.out, on_epoch=report)
    print(
        f"test acc {scores.test_score:.2f} %, val acc {scores.val_score:.2f} %; checkpoint: "
        f"{args.out}"
    )
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    add_inputs_args(p, task=True)


def _evaluate_run(args: argparse.Namespace) -> int:
    _, loaded = load(args, trained=True)
    splits = (("val", loaded.data.val), ("test", loaded.data.test))
    rows = [[name, loaded.score(loaded.model, split)] for name, split in splits]
    print(format_table(["split", f"{loaded.metric} %"], rows))
    return 0


def _step_args(p: argparse.ArgumentParser, out: dict) -> None:
    add_inputs_args(p, scope=True, task=True)
    add_policy_args(p)
    p.add_argument("--out", **out)
    p.add_argument("--all-groups", action="store_true", help="also list groups that stay whole")


def _analyze_args(p: argparse.ArgumentParser) -> None:
    _step_args(p, {"metavar": "JSON", "help": "write the analysis as JSON"})


def _print_analysis(found: StepAnalysis, all_groups: bool) -> None:
    record = found.record
    print(format_table(*layer_rows(record), title="Input sparsity per layer (eq. 1, 2)"))
    title = "Channel groups: sparsity, |gamma|, planned ratio (eq. 4)"
    print("\n" + format_table(*group_rows(record, all_groups=all_groups), title=title))
    print(f"\nparams {record['params']:,}  FLOPs {record['flops']:,} MACs/image  "
          f"({record['images']} images)\n\n{found.prunability.summary(top=5)}")  # fmt: skip
    if found.warning():
        print(f"warning: {found.warning()}", file=sys.stderr)


def _analyze_run(args: argparse.Namespace) -> int:
    inputs, loaded = load(args, scored=False)
    found = analyse_step(loaded, policy_config(args), args.images, inputs)
    _print_analysis(found, args.all_groups)
    if args.out:
        atomic_write_json(args.out, {"model": loaded.meta, **found.record})
        print(f"analysis: {args.out}")
    return 0


def _prune_args(p: argparse.ArgumentParser) -> None:
    help_ = "folder for pruned.pt, plan.json, analysis.json, summary.json"
    _step_args(p, {"required": True, "metavar": "DIR", "help": help_})
    p.add_argument("--plan", metavar="PLAN", help="apply this saved plan.json instead")
    p.add_argument("--evaluate", action="store_true", help="val/test score before and after")


def _prune_run(args: argparse.Namespace) -> int:
    saved = PruningPlan.load(args.plan) if args.plan else None
    inputs, loaded = load(args, scored=args.evaluate)
    result = prune_step(
        loaded,
        inputs,
        args.out,
        policy=policy_config(args),
        images=args.images,
        plan=saved,
        score=args.evaluate,
    )
    if result.analysis is not None:
        _print_analysis(result.analysis, args.all_groups)
    title = f"Pruning step (FLOPs: of {loaded.scope})" if loaded.scope else "Pruning step"
    rows = summary_rows(result.step.before, result.step.after, loaded.metric)
    print("\n" + format_table(*rows, title=title))
    print(f"\n{result.files}  plan: {Path(args.out) / 'plan.json'}")
    return 0


COMMANDS: dict[str, Command] = {
    "models": (_models_args, _models_run),
    "train": (_train_args, _train_run),
    "evaluate": (_evaluate_args, _evaluate_run),
    "analyze": (_analyze_args, _analyze_run),
    "prune": (_prune_args, _prune_run),
}
