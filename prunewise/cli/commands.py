"""The sub-commands: models, train, evaluate, analyze, prune."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from prunewise.analysis import Prunability, analyze, count_flops, count_params, prunability
from prunewise.cli.common import (
    Loaded,
    add_data_args,
    add_model_args,
    add_policy_args,
    load_model_and_data,
    policy_config,
)
from prunewise.cli.index import Command
from prunewise.data import make_loader, sample_images
from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.io import atomic_write_json, save_checkpoint
from prunewise.models import has_batchnorm, list_models
from prunewise.models.bring import input_channels
from prunewise.models.scoped import LIBRARY_KINDS, save_scoped_checkpoint
from prunewise.models.sources import parse_source
from prunewise.prune import PruningPlan, apply_plan, decide, replace_scope
from prunewise.records import PruneStep, Scores, epoch_score, scores_meta
from prunewise.report import analysis_records, format_table, group_rows, layer_rows, summary_rows
from prunewise.settings import add_setting
from prunewise.train import TrainConfig, TrainState, evaluate, pick_device, train

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


TRAIN_FIELDS = ("epochs", "lr", "lr_min", "momentum", "nesterov", "weight_decay", "progress")


def _train_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("training (paper A: SGD, Nesterov, cosine 0.01 -> 1e-5)")
    for name in TRAIN_FIELDS:
        add_setting(g, TrainConfig, name)
    p.add_argument("--out", required=True, metavar="CKPT", help="where to write the checkpoint")


def _loaders(loaded: Loaded, batch_size: int, seed: int) -> dict[str, Any]:
    d = loaded.data
    return {
        "train": make_loader(d.train, batch_size, shuffle=True, seed=seed),
        "val": make_loader(d.val, 512, shuffle=False),
        "test": make_loader(d.test, 512, shuffle=False),
    }


def _train_run(args: argparse.Namespace) -> int:
    if Path(args.out).is_dir():
        raise PrunewiseError(
            f"--out {args.out} is a directory; give the checkpoint's file name, e.g. "
            f"{Path(args.out) / 'baseline.pt'}"
        )
    config = TrainConfig(
        **{name: getattr(args, name) for name in (*TRAIN_FIELDS, "device", "seed")}
    )
    loaded = load_model_and_data(args, augment=True)
    build_channel_graph(loaded.model, loaded.input_shape)
    loaders = _loaders(loaded, args.batch_size, args.seed)

    def report(state: TrainState) -> None:
        n, m = state.epochs_done, state.history[-1]
        print(f"epoch {n}/{config.epochs}: loss {m['loss']:.4f}, val acc {epoch_score(m):.2f} %")

    history = train(
        loaded.model, loaders["train"], config, val_loader=loaders["val"], on_epoch=report
    )
    test_acc = evaluate(loaded.model, loaders["test"])
    val_acc = epoch_score(history[-1]) if history else None
    if val_acc is None:
        val_acc = evaluate(loaded.model, loaders["val"])
    meta = {
        **loaded.meta,
        **scores_meta(val_acc, test_acc),
        "train": asdict(config),
        "history": history,
        **({"limit": args.limit} if args.limit is not None else {}),
    }
    save_checkpoint(args.out, loaded.model, input_shape=loaded.input_shape, meta=meta)
    print(f"test acc {test_acc:.2f} %, val acc {val_acc:.2f} %; checkpoint: {args.out}")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, checkpoint_required=True)
    add_data_args(p)


def _evaluate_run(args: argparse.Namespace) -> int:
    loaded = load_model_and_data(args)
    loaders = _loaders(loaded, args.batch_size, args.seed)
    rows = [[split, evaluate(loaded.model, loaders[split])] for split in ("val", "test")]
    print(format_table(["split", "accuracy %"], rows))
    return 0


def _analyze_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, scope=True)
    add_data_args(p)
    add_policy_args(p)
    p.add_argument("--out", default=None, metavar="JSON", help="write the analysis as JSON")
    p.add_argument("--all-groups", action="store_true", help="also list groups that stay whole")


def _analysis(
    args: argparse.Namespace, loaded: Loaded
) -> tuple[Any, PruningPlan, dict, Prunability]:
    config = policy_config(args)
    if config.importance == "bn-gamma" and not has_batchnorm(loaded.part):
        raise PrunewiseError(
            f"model {loaded.meta.get('model') or args.checkpoint} has no BatchNorm layers, so "
            "there is nothing to prune by |gamma| (paper A ranks channels by BatchNorm |gamma|); "
            "rank them by their weights instead (--importance l1 or l2), or pick a model with "
            "BatchNorm, e.g. vgg13_bn_small or resnet18 (`prunewise models`)"
        )
    available = len(loaded.data.val)
    if args.images > available:
        cap = " (capped by --limit)" if args.limit is not None else ""
        raise PrunewiseError(
            f"--images {args.images} is more than the {available} validation images{cap}; "
            f"pass --images {available} or fewer"
        )
    graph = build_channel_graph(loaded.part, loaded.input_shape)
    images = sample_images(loaded.data.val, args.images, args.seed)
    if tuple(images.shape[1:]) != tuple(loaded.input_shape):
        raise PrunewiseError(
            f"the data's images are {tuple(images.shape[1:])}, the model is traced for "
            f"{loaded.input_shape}; drop --input-size or pick matching data"
        )
    result = analyze(graph, images.to(pick_device(args.device)))
    plan = decide(result, config)
    prunable = prunability(graph, prune_tied=config.prune_tied, importance=config.importance)
    return result, plan, analysis_records(result, plan, prunable), prunable


def _print_prunability(prunable: Prunability) -> None:
    print(f"\n{prunable.summary(top=5)}")
    warning = prunable.warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _print_analysis(record: dict, all_groups: bool) -> None:
    print(format_table(*layer_rows(record), title="Input sparsity per layer (eq. 1, 2)"))
    print()
    print(
        format_table(
            *group_rows(record, all_groups=all_groups),
            title="Channel groups: sparsity, |gamma|, planned ratio (eq. 4)",
        )
    )
    print(
        f"\nparams {record['params']:,}  FLOPs {record['flops']:,} MACs/image  "
        f"({record['images']} images)"
    )


def _analyze_run(args: argparse.Namespace) -> int:
    loaded = load_model_and_data(args)
    _result, _plan, record, prunable = _analysis(args, loaded)
    _print_analysis(record, args.all_groups)
    _print_prunability(prunable)
    if args.out:
        atomic_write_json(args.out, {"model": loaded.meta, **record})
        print(f"analysis: {args.out}")
    return 0


def _prune_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, scope=True)
    add_data_args(p)
    add_policy_args(p)
    p.add_argument(
        "--plan",
        default=None,
        metavar="PLAN",
        help="apply this saved plan.json instead of measuring a new one",
    )
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="report val/test accuracy before and after (no fine-tuning)",
    )
    p.add_argument("--all-groups", action="store_true", help="also list groups that stay whole")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for pruned.pt, plan.json, analysis.json, summary.json",
    )


def _prune_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PrunewiseError(f"--out {out} is a file; prune writes a folder, give a folder name")
    if args.model_scope and args.evaluate:
        raise PrunewiseError(
            "--evaluate scores a classifier's accuracy; a model pruned in --scope is scored "
            "with its own metric: drop --evaluate"
        )
    saved = PruningPlan.load(args.plan) if args.plan else None
    loaded = load_model_and_data(args)
    if saved is not None:
        plan, record = saved, None
        graph = build_channel_graph(loaded.part, loaded.input_shape)
        plan.check_fits({g.id: g.size for g in graph.groups}, graph.input_shape)
    else:
        result, plan, record, prunable = _analysis(args, loaded)
        graph = result.graph
        _print_analysis(record, args.all_groups)
        _print_prunability(prunable)
    pruned = apply_plan(graph, plan)
    whole = replace_scope(loaded.model, args.model_scope, pruned) if args.model_scope else pruned
    before = Scores(count_params(loaded.model), count_flops(loaded.part, loaded.input_shape))
    after = Scores(count_params(whole), count_flops(pruned, loaded.input_shape))
    if args.evaluate:
        loaders = _loaders(loaded, args.batch_size, args.seed)
        before, after = (
            dataclasses.replace(
                s, val_score=evaluate(m, loaders["val"]), test_score=evaluate(m, loaders["test"])
            )
            for s, m in ((before, loaded.model), (after, pruned))
        )
    meta = {**loaded.meta, "pruned_from": args.checkpoint, "plan": plan.policy}
    if args.evaluate:
        meta.update(scores_meta(after.val_score, after.test_score))
    plan.save(out / "plan.json")
    if record is not None:
        atomic_write_json(out / "analysis.json", {"model": loaded.meta, **record})
    files = _save_pruned(args, loaded, out, pruned, whole, meta)
    step = PruneStep(before, after, plan.policy, args.model_scope)
    atomic_write_json(out / "summary.json", step.to_dict())
    print()
    title = f"Pruning step (FLOPs: of {args.model_scope})" if args.model_scope else "Pruning step"
    print(format_table(*summary_rows(before, after), title=title))
    print(f"\n{files}  plan: {out / 'plan.json'}")
    return 0


def _save_pruned(
    args: argparse.Namespace,
    loaded: Loaded,
    out: Path,
    pruned: nn.Module,
    whole: nn.Module,
    meta: dict[str, Any],
) -> str:
    """pruned.pt (the whole model), and with --scope scope.pt (the pruned part alone)."""
    shape = loaded.input_shape
    if not args.model_scope:
        save_checkpoint(out / "pruned.pt", pruned, input_shape=shape, meta=meta)
        return f"pruned model: {out / 'pruned.pt'}"
    save_checkpoint(out / "scope.pt", pruned, input_shape=shape, meta=meta)
    text = f"pruned {args.model_scope}: {out / 'scope.pt'}"
    name = str(loaded.meta.get("model"))
    if args.checkpoint or parse_source(name).kind not in LIBRARY_KINDS:
        why = "it came from a checkpoint" if args.checkpoint else f"{name} is your code"
        return text + (
            f" (no whole-model file: {why}, which a prunewise checkpoint never names; put "
            "scope.pt back into your model with prunewise.prune.replace_scope)"
        )
    source = {
        "name": name,
        "num_classes": loaded.data.num_classes,
        "in_channels": input_channels(loaded.model),
        "width": loaded.meta.get("width"),
        "model_args": args.model_args,
    }
    save_scoped_checkpoint(
        out / "pruned.pt", whole, args.model_scope, source=source, input_shape=shape, meta=meta
    )
    return text + f"; whole model: {out / 'pruned.pt'} (prunewise.models.load_scoped_checkpoint)"


COMMANDS: dict[str, Command] = {
    "models": (_models_args, _models_run),
    "train": (_train_args, _train_run),
    "evaluate": (_evaluate_args, _evaluate_run),
    "analyze": (_analyze_args, _analyze_run),
    "prune": (_prune_args, _prune_run),
}
