"""Options shared by the sub-commands, and turning them into a model, data and configs."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from prunewise.data import DATASET_NAMES, DataBundle, DataConfig, load_data
from prunewise.data.datasets import MAX_IMAGE_SIZE
from prunewise.errors import PrunewiseError
from prunewise.graph.trace import scope_hint
from prunewise.hw.dpu.config import resolve_round_to
from prunewise.io import load_checkpoint
from prunewise.models import check_input_fits, model_info
from prunewise.models.bring import bring_model
from prunewise.models.sources import parse_source
from prunewise.pipeline.config import ModelSpec, RunConfig
from prunewise.prune import RefinedConfig, get_scope
from prunewise.settings import add_setting, spec_of
from prunewise.train import TrainConfig, pick_device

__all__ = [
    "DEFAULT_MODEL",
    "POLICY_FIELDS",
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
MAX_CHANNELS = 4096
"""Most input channels --input-size takes."""

# options of the step commands that are settings of a config (declared there, once):
# dest -> (config class, field)
_DECLARED: dict[str, tuple[type, str]] = {
    "batch_size": (RunConfig, "batch_size"),
    "images": (RunConfig, "analysis_images"),
    "seed": (TrainConfig, "seed"),
    "limit": (DataConfig, "limit"),
    "width": (ModelSpec, "width"),
}


def add_model_args(
    p: argparse.ArgumentParser, *, checkpoint_required: bool = False, scope: bool = False
) -> None:
    """--checkpoint, or --model/--width for a freshly built (untrained) model; with `scope`,
    --scope for the part of the model to work on."""
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
            metavar="SOURCE",
            help=f"{spec_of(ModelSpec, 'name').help} (default {DEFAULT_MODEL})",
        )
        g.add_argument(
            "--width",
            type=spec_of(ModelSpec, "width").parse,
            default=None,
            help="channel width multiplier of prunewise models, e.g. 0.25 "
            f"({spec_of(ModelSpec, 'width').requirement()}; default: the model's own)",
        )
        for name in ("args", "weights", "trust_pickle"):
            add_setting(g, ModelSpec, name, dest=f"model_{name}")
    if scope:
        g.add_argument(
            "--scope",
            dest="model_scope",
            default=None,
            metavar="MODULE",
            help="work on this sub-module only (a detector's backbone: --scope backbone); its "
            "input and output channels stay fixed, the model around it is kept",
        )
    add_setting(g, TrainConfig, "device")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir, --batch-size, --seed, --input-size, --limit."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        default=None,
        help="dataset (default: the checkpoint's, else fashion-mnist)",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the dataset lies (Fashion-MNIST: /usr/share/datasets/fashion-mnist)",
    )
    add_setting(g, RunConfig, "batch_size")
    add_setting(g, TrainConfig, "seed")
    g.add_argument(
        "--input-size",
        default=None,
        metavar="C,H,W",
        help="model input shape; images are converted and resized to it (default: the "
        "checkpoint's, else the data's)",
    )
    add_setting(g, DataConfig, "limit")


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """Options of the layer-wise refined policy (eq. 4) and of the sparsity measurement."""
    g = p.add_argument_group("refined pruning policy")
    g.add_argument(
        "--scheme",
        type=int,
        choices=(1, 2),
        default=None,
        help="paper A preset: 1 = alpha=beta=0.5 (default), 2 = alpha=beta=1",
    )
    for name in POLICY_FIELDS:
        parse = round_to_arg if name == "round_to" else None
        add_setting(g, RefinedConfig, name, suppress=name in ("alpha", "beta"), parse=parse)
    add_setting(g, RunConfig, "analysis_images", dest="images")


POLICY_FIELDS = tuple(f.name for f in fields(RefinedConfig))


def round_to_arg(text: str) -> int:
    """--round-to: an integer, or a DPU size or board name (its channel parallelism)."""
    try:
        return resolve_round_to(text)
    except PrunewiseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def policy_config(args: argparse.Namespace) -> RefinedConfig:
    """RefinedConfig from the policy options (scheme preset, then explicit alpha/beta)."""
    extra: dict[str, Any] = {
        name: getattr(args, name) for name in POLICY_FIELDS if name not in ("alpha", "beta")
    }
    preset = RefinedConfig.scheme(args.scheme or 1)
    alpha = getattr(args, "alpha", preset.alpha)
    beta = getattr(args, "beta", preset.beta)
    return RefinedConfig(alpha=alpha, beta=beta, **extra)


def validate_args(args: argparse.Namespace) -> None:
    """Check the step commands' options that are settings of a config, by their declaration."""
    for dest, (cls, name) in _DECLARED.items():
        value = getattr(args, dest, None)
        if value is not None:
            spec = spec_of(cls, name)
            where = f"{cls.section}.{name}" if cls.section else name
            spec.check(value, f"{where} ({spec.flag})")


def parse_input_size(text: str | None) -> tuple[int, ...] | None:
    """'3,32,32' -> (3, 32, 32): channels in [1, 4096], each side in [1, MAX_IMAGE_SIZE]."""
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
    if shape[0] > MAX_CHANNELS or max(shape[1:]) > MAX_IMAGE_SIZE:
        raise PrunewiseError(
            f"--input-size {text} is too large: at most {MAX_CHANNELS} channels and "
            f"{MAX_IMAGE_SIZE} pixels a side"
        )
    return shape


@dataclass
class Loaded:
    """What a command works on."""

    model: nn.Module
    data: DataBundle
    input_shape: tuple[int, ...]
    meta: dict[str, Any]
    scope: str | None = None

    @property
    def part(self) -> nn.Module:
        """The sub-module --scope names, else the whole model; input_shape is its input."""
        return get_scope(self.model, self.scope) if self.scope else self.model


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
    if args.checkpoint and getattr(args, "model_weights", None) is not None:
        raise PrunewiseError("give --checkpoint or --weights, not both")
    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        model, meta = ck.model, dict(ck.meta)
        made_for = ck.input_shape
        channels = made_for[0] if made_for[0] in (1, 3) else None
        if len(made_for) == 3 and made_for[1] == made_for[2]:
            size = made_for[1]
    else:
        meta = {"model": getattr(args, "model", None) or DEFAULT_MODEL, "width": args.width}
        source = parse_source(meta["model"])
        if getattr(args, "model_weights", None) is not None:
            meta["weights"] = args.model_weights
        if source.kind == "registry" and model_info(meta["model"]).source == "torchvision":
            channels = 3
            if requested is not None and requested[0] != 3:
                raise PrunewiseError(
                    f"torchvision's {meta['model']} takes 3 input channels, --input-size "
                    f"{args.input_size} gives {requested[0]}; use --input-size 3,H,W"
                )
    if requested is not None:
        channels, size = _loadable_shape(requested, args.input_size)
    dataset = args.dataset or meta.get("dataset") or "fashion-mnist"
    data_config = DataConfig(
        name=dataset,
        data_dir=args.data_dir,
        seed=args.seed,
        channels=channels,
        image_size=size,
        augment=augment,
        limit=getattr(args, "limit", None),
    )
    data = load_data(data_config)
    if not args.checkpoint:
        torch.manual_seed(args.seed)
        brought = bring_model(
            meta["model"],
            num_classes=data.num_classes,
            in_channels=data.input_shape[0],
            width=meta["width"],
            model_args=getattr(args, "model_args", None),
            weights=getattr(args, "model_weights", None),
            trust_pickle=bool(getattr(args, "model_trust_pickle", False)),
        )
        model = brought.model
        if brought.in_channels in (1, 3) and brought.in_channels != data.input_shape[0]:
            if requested is not None:
                raise PrunewiseError(
                    f"{meta['model']} takes {brought.in_channels} input channels (its weights "
                    f"say so), --input-size {args.input_size} gives {requested[0]}"
                )
            data = load_data(dataclasses.replace(data_config, channels=brought.in_channels))
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
    scope = getattr(args, "model_scope", None)
    if scope:
        meta["scope"] = scope
    loaded = Loaded(model, data, shape, meta, scope)
    if hasattr(args, "model_scope") and not scope:
        hint += scope_hint(model)  # a detector fails here: its backbone takes the images
    check_input_fits(loaded.part, shape, hint=hint)
    return loaded
