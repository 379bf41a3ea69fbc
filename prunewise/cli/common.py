"""Options shared by the sub-commands, and turning them into a model, data and configs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunewise.data import DataBundle, DataConfig, limit_data, load_data
from prunewise.errors import PrunewiseError
from prunewise.hw.dpu.config import resolve_round_to
from prunewise.io import load_checkpoint
from prunewise.models import build_model, check_input_fits, model_info
from prunewise.prune import POLICIES, RefinedConfig
from prunewise.train import pick_device

__all__ = [
    "DEFAULT_MODEL",
    "Loaded",
    "add_data_args",
    "add_model_args",
    "add_policy_args",
    "load_model_and_data",
    "parse_input_size",
    "policy_config",
    "round_to_arg",
    "validate_args",
]

DEFAULT_MODEL = "vgg13_bn_small"
DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic")


def add_model_args(p: argparse.ArgumentParser, *, checkpoint_required: bool = False) -> None:
    """--checkpoint, or --model/--width for a freshly built (untrained) model."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        required=checkpoint_required,
        metavar="CKPT",
        help="a prunewise checkpoint (from `prunewise train` or `prunewise prune`)",
    )
    if not checkpoint_required:
        g.add_argument(
            "--model",
            default=None,
            metavar="NAME",
            help=f"registered model name (default {DEFAULT_MODEL}; `prunewise models`)",
        )
        g.add_argument(
            "--width",
            type=float,
            default=None,
            help="channel width multiplier of prunewise models (e.g. 0.25)",
        )
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda[:N]")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir, --batch-size, --seed, --input-size."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="dataset (default: the checkpoint's, else fashion-mnist)",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the dataset lies (Fashion-MNIST: /usr/share/datasets/fashion-mnist)",
    )
    g.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    g.add_argument("--seed", type=int, default=0, help="seed of splits, sampling, training")
    g.add_argument(
        "--input-size",
        default=None,
        metavar="C,H,W",
        help="model input shape; images are converted and resized to it (default: the "
        "checkpoint's, else the data's)",
    )
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="use at most N images of each split (train, val, test), drawn with --seed: "
        "for quick runs, accuracies are then estimates (default: all)",
    )


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """Options of the layer-wise refined policy (eq. 4)."""
    g = p.add_argument_group("refined pruning policy")
    g.add_argument(
        "--scheme",
        type=int,
        choices=(1, 2),
        default=None,
        help="paper A preset: 1 = alpha=beta=0.5 (default), 2 = alpha=beta=1",
    )
    g.add_argument("--alpha", type=float, default=None, help="eq. 4 threshold in (0, 1]")
    g.add_argument("--beta", type=float, default=None, help="eq. 4 multiplier in (0, 1]")
    g.add_argument(
        "--policy",
        choices=sorted(POLICIES),
        default="eq4",
        help="eq4 = paper A's rule; continuous = its slopes joined at alpha",
    )
    g.add_argument("--min-channels", type=int, default=2, help="never keep fewer (default 2)")
    g.add_argument(
        "--round-to",
        type=round_to_arg,
        default=1,
        help="kept channel counts become multiples of N, or of a DPU size's / board's channel "
        "parallelism (B4096, zcu102: 16)",
    )
    g.add_argument(
        "--reference-compat",
        action="store_true",
        help="remove floor(N*P)+1 channels as the authors' code does",
    )
    g.add_argument(
        "--min-sparsity",
        type=float,
        default=0.0,
        help="leave groups whose sparsity is below this (authors' VGG code: 0.1)",
    )
    g.add_argument(
        "--prune-tied",
        action="store_true",
        help="also prune groups tied by residual additions, jointly",
    )
    g.add_argument(
        "--images",
        type=int,
        default=100,
        help="images to measure input sparsity on (default 100; 1 = the paper)",
    )


def round_to_arg(text: str) -> int:
    """--round-to: an integer, or a DPU size or board name (its channel parallelism)."""
    try:
        return resolve_round_to(text)
    except PrunewiseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def policy_config(args: argparse.Namespace) -> RefinedConfig:
    """RefinedConfig from the policy options (scheme preset, then explicit alpha/beta)."""
    extra: dict[str, Any] = {
        "policy": args.policy,
        "min_channels": args.min_channels,
        "round_to": args.round_to,
        "reference_compat": args.reference_compat,
        "min_sparsity": args.min_sparsity,
        "prune_tied": args.prune_tied,
    }
    base = RefinedConfig.scheme(args.scheme or 1, **extra)
    alpha = base.alpha if args.alpha is None else args.alpha
    beta = base.beta if args.beta is None else args.beta
    return RefinedConfig(alpha=alpha, beta=beta, **extra)


def _at_least(low: float) -> tuple[Callable[[float], bool], str]:
    return (lambda v: v >= low), f">= {low:g}"


_IS_INT = {"batch_size", "epochs", "images", "limit", "min_channels", "round_to", "seed"}
_CHECKS: dict[str, tuple[Callable[[float], bool], str]] = {
    "batch_size": _at_least(1),
    "epochs": _at_least(0),
    "images": _at_least(1),
    "limit": _at_least(1),
    "seed": _at_least(0),
    "min_channels": _at_least(1),
    "round_to": _at_least(1),
    "alpha": ((lambda v: 0 < v <= 1), "in (0, 1] (eq. 4's sparsity threshold)"),
    "beta": ((lambda v: 0 < v <= 1), "in (0, 1] (eq. 4's multiplier)"),
    "min_sparsity": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "lr": ((lambda v: v > 0), "> 0"),
    "lr_min": _at_least(0),
    "weight_decay": _at_least(0),
}


def validate_args(args: argparse.Namespace) -> None:
    """Check the numeric options a command has, naming the option that is out of range."""
    for dest, (ok, requirement) in _CHECKS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if not (math.isfinite(value) and ok(value)):
            kind = "an integer " if dest in _IS_INT else ""
            flag = "--" + dest.replace("_", "-")
            raise PrunewiseError(f"{flag} must be {kind}{requirement}, got {value}")


def parse_input_size(text: str | None) -> tuple[int, ...] | None:
    """'3,32,32' -> (3, 32, 32)."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as exc:
        raise PrunewiseError(
            f"--input-size must look like C,H,W (e.g. 3,32,32), got {text!r}"
        ) from exc
    if len(shape) < 2 or any(v <= 0 for v in shape):
        raise PrunewiseError(f"--input-size must be positive C,H,W, got {text!r}")
    return shape


@dataclass
class Loaded:
    """What a command works on."""

    model: nn.Module
    data: DataBundle
    input_shape: tuple[int, ...]
    meta: dict[str, Any]


def _loadable_shape(shape: tuple[int, ...], text: str) -> tuple[int, int]:
    """Channels and image size the data loaders should produce for --input-size."""
    if len(shape) != 3 or shape[0] not in (1, 3) or shape[1] != shape[2]:
        raise PrunewiseError(
            f"--input-size {text} cannot be fed with images: give C,H,W with 1 (grayscale) "
            "or 3 (RGB) channels and H == W, e.g. 3,32,32"
        )
    return shape[0], shape[1]


def load_model_and_data(args: argparse.Namespace, *, augment: bool = False) -> Loaded:
    """Model from --checkpoint or --model, data matching its input shape (or --input-size)."""
    validate_args(args)
    device = pick_device(args.device)
    requested = parse_input_size(args.input_size)
    channels: int | None = None
    size: int | None = None
    made_for: tuple[int, ...] = ()
    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        model, meta = ck.model, dict(ck.meta)
        made_for = ck.input_shape
        channels = made_for[0] if made_for[0] in (1, 3) else None
        if len(made_for) == 3 and made_for[1] == made_for[2]:
            size = made_for[1]
    else:
        meta = {"model": getattr(args, "model", None) or DEFAULT_MODEL, "width": args.width}
        if model_info(meta["model"]).source == "torchvision":
            channels = 3
            if requested is not None and requested[0] != 3:
                raise PrunewiseError(
                    f"torchvision's {meta['model']} takes 3 input channels, --input-size "
                    f"{args.input_size} gives {requested[0]}; use --input-size 3,H,W"
                )
    if requested is not None:
        channels, size = _loadable_shape(requested, args.input_size)
    dataset = args.dataset or meta.get("dataset") or "fashion-mnist"
    data = load_data(
        DataConfig(
            name=dataset,
            data_dir=args.data_dir,
            seed=args.seed,
            channels=channels,
            image_size=size,
            augment=augment,
        )
    )
    if getattr(args, "limit", None) is not None:
        data = limit_data(data, args.limit, args.seed)
    if not args.checkpoint:
        torch.manual_seed(args.seed)
        model = build_model(
            meta["model"],
            num_classes=data.num_classes,
            in_channels=data.input_shape[0],
            width=meta["width"],
        )
    meta.setdefault("dataset", dataset)
    meta.setdefault("num_classes", data.num_classes)
    if args.checkpoint and meta.get("num_classes") != data.num_classes:
        raise PrunewiseError(
            f"checkpoint has {meta.get('num_classes')} classes, dataset {dataset} has "
            f"{data.num_classes}; pick the dataset it was trained on"
            + (f" (--dataset {meta['dataset']})" if meta.get("dataset") else "")
        )
    shape = requested or tuple(data.input_shape)
    if requested is not None:
        hint = (
            f"; the checkpoint was made for {made_for}: drop --input-size"
            if args.checkpoint
            else "; pick another --input-size C,H,W (or drop it to use the data's)"
        )
    elif args.checkpoint:
        hint = (
            f"; the checkpoint was made for {made_for}, the {dataset} images are "
            f"{tuple(data.input_shape)}"
        )
    else:
        hint = (
            f"; the {dataset} images are {shape}: pick a model made for them (`prunewise "
            "models`) or resize the images with --input-size C,H,W"
        )
    model = model.to(device)
    check_input_fits(model, shape, hint=hint)
    return Loaded(model, data, shape, meta)
