"""What a one-step command works on: a model (a prunewise checkpoint, or a source built
fresh, optionally with trained weights and a scope) and the data that fit it.

`InputsConfig` declares every option once (the command line is made from it); `load_inputs`
loads and checks them together: the data are converted to the model's input channels and
size, the classes must agree, and a model that does not take the images says which option to
change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prunewise.data import (
    DATASET_NAMES,
    DataBundle,
    DataConfig,
    load_data,
    load_segmentation,
    make_loader,
    sample_images,
)
from prunewise.data.datasets import MAX_IMAGE_SIZE
from prunewise.errors import PrunewiseError, listing
from prunewise.graph.trace import scope_hint
from prunewise.io import check_writable, load_checkpoint
from prunewise.models import check_input_fits, model_info
from prunewise.models.bring import Brought, bring_model
from prunewise.models.sources import parse_source
from prunewise.pipeline.config import ModelSpec, RunConfig
from prunewise.prune import get_scope
from prunewise.quant.config import calibration_shortfall
from prunewise.records.deploy import MIOU, TOP1
from prunewise.settings import Settings, same_as, setting, spec_of
from prunewise.train import TrainConfig, evaluate, main_output, mean_iou, pick_device
from prunewise.train.metrics import SAME_SIZE

__all__ = [
    "DEFAULT_MODEL",
    "InputsConfig",
    "Loaded",
    "bare_model",
    "check_class_names",
    "check_output",
    "check_weight_classes",
    "load_inputs",
]

DEFAULT_MODEL = "vgg13_bn_small"
"""The model a command builds when given neither --checkpoint nor --model."""

MAX_CHANNELS = 4096
"""Most input channels --input-size takes."""


@dataclass(frozen=True)
class InputsConfig(Settings):
    """The model, data and device of a one-step command (train, evaluate, analyze, prune,
    deploy, export, sparsify). Files are read by `load_inputs`, not here."""

    section: ClassVar[str] = ""

    checkpoint: str | None = setting(
        None,
        "a prunewise checkpoint (from `prunewise train` or `prunewise prune`)",
        kind="str",
        flag="--checkpoint",
        metavar="CKPT",
    )
    model: str | None = same_as(
        ModelSpec,
        "name",
        default=None,
        optional=True,
        help=f"{spec_of(ModelSpec, 'name').help}; built untrained (unset: {DEFAULT_MODEL})",
    )
    width: float | None = same_as(ModelSpec, "width", default=None)
    model_args: str | None = same_as(ModelSpec, "args")
    model_weights: str | None = same_as(ModelSpec, "weights")
    model_new_head: bool = same_as(ModelSpec, "new_head")
    model_trust_pickle: bool = same_as(ModelSpec, "trust_pickle")
    model_scope: str | None = setting(
        None,
        "work on this sub-module only (a detector's backbone: --scope backbone); its input "
        "and output channels stay fixed, the model around it is kept",
        kind="str",
        flag="--scope",
        metavar="MODULE",
    )
    device: str = same_as(TrainConfig, "device")
    dataset: str | None = setting(
        None,
        "dataset (unset: the checkpoint's, else fashion-mnist)",
        kind="str",
        choices=DATASET_NAMES,
        flag="--dataset",
    )
    data_dir: str | None = same_as(DataConfig, "data_dir")
    batch_size: int = same_as(RunConfig, "batch_size")
    seed: int = same_as(TrainConfig, "seed")
    input_size: tuple[int, ...] | None = setting(
        None,
        "model input shape C,H,W; images are converted and resized to it (unset: the "
        "checkpoint's, else the data's)",
        kind="ints",
        low=1,
        pattern_text="C,H,W: positive integers such as 3,32,32",
        flag="--input-size",
        metavar="C,H,W",
    )
    limit: int | None = same_as(DataConfig, "limit")
    task: str | None = same_as(
        RunConfig,
        "task",
        default=None,
        optional=True,
        help=f"{spec_of(RunConfig, 'task').help} (unset: a checkpoint scored by mIoU is a "
        "segmentation model, others classifiers)",
    )

    def check(self) -> None:
        """--checkpoint excludes --model and --weights; --input-size is C,H,W within bounds."""
        if self.checkpoint is not None and self.model_weights is not None:
            raise PrunewiseError("give --checkpoint or --weights, not both")
        if self.checkpoint is not None and self.model is not None:
            raise PrunewiseError("give --checkpoint or --model, not both")
        shape = self.input_size
        if shape is not None and len(shape) < 2:
            self.fail("input_size", "C,H,W such as 3,32,32", shape)
        if shape is not None and (shape[0] > MAX_CHANNELS or max(shape[1:]) > MAX_IMAGE_SIZE):
            raise PrunewiseError(
                f"--input-size {','.join(map(str, shape))} is too large: at most "
                f"{MAX_CHANNELS} channels and {MAX_IMAGE_SIZE} pixels a side"
            )


@dataclass
class Loaded:
    """What a command works on: the model, the data, the model's input shape (C, H, W), the
    checkpoint's meta (model, dataset, classes, scores) and the scope worked on."""

    model: nn.Module
    data: DataBundle
    input_shape: tuple[int, ...]
    meta: dict[str, Any]
    scope: str | None = None
    task: str = "classification"
    batch_size: int = 128

    @property
    def part(self) -> nn.Module:
        """The sub-module the scope names, else the whole model; input_shape is its input."""
        return get_scope(self.model, self.scope) if self.scope else self.model

    @property
    def metric(self) -> str:
        """What `score` gives: TOP1 (% of images) for a classifier, MIOU (%) for segmentation."""
        return MIOU if self.task == "segmentation" else TOP1

    def calibration_images(self, n: int, seed: int) -> torch.Tensor:
        """`n` validation images drawn with `seed` (n, C, H, W) to calibrate INT8 on; raises
        PrunewiseError when the validation split holds fewer."""
        if n > len(self.data.val):  # type: ignore[arg-type]
            more = "give the data more validation images"
            raise PrunewiseError(calibration_shortfall(n, len(self.data.val), more))  # type: ignore[arg-type]
        return sample_images(self.data.val, n, seed)

    def loader(self, split: Dataset) -> DataLoader:
        """`split` in order, in batches of 512 images (a classifier's) or of the batch size
        (segmentation: a batch's logits are one map per class)."""
        batch = self.batch_size if self.task == "segmentation" else 512
        return make_loader(split, batch, shuffle=False)

    def score(self, model: nn.Module, split: Dataset) -> float:
        """`model`'s top-1 accuracy (%) on `split`, or its mean IoU (%) for segmentation."""
        if self.task == "segmentation":
            return mean_iou(model, self.loader(split), self.data.num_classes)
        return evaluate(model, self.loader(split))


def check_output(
    out: Any,
    classes: int,
    *,
    task: str = "classification",
    what: str = "the model",
    size: tuple[int, ...] | None = None,
) -> None:
    """A classifier's output `out` (what `check_input_fits` returns) is one score per class of
    the data, (N, classes); a segmentation model's one map per class, (N, classes, H, W) (or a
    dict whose "out" entry is), of the input's (H, W) `size` when given. Raises
    PrunewiseError saying what to pass, also for an output nothing can score (a tuple, a dict
    without "out")."""
    out = main_output(out)
    per_image = tuple(int(d) for d in out.shape[1:])
    if task == "segmentation" and out.dim() != 4:
        raise PrunewiseError(
            f"{what} gives {per_image} per image; a segmentation model gives one map per class "
            "(classes, H, W)"
        )
    if task == "segmentation" and size is not None and tuple(out.shape[2:]) != tuple(size):
        raise PrunewiseError(
            f"{what} gives class maps of {' x '.join(map(str, out.shape[2:]))} for images of "
            f"{' x '.join(map(str, size))}: {SAME_SIZE}"
        )
    if task != "segmentation" and out.dim() != 2:
        fix = (
            "a map per class is a segmentation model's output: pass --task segmentation (a "
            "folder of images and masks)"
            if out.dim() == 4
            else "make its forward return (N, classes) scores"
        )
        raise PrunewiseError(
            f"{what} gives {per_image} per image, a classifier one score per class: {fix}"
        )
    if out.shape[1] != classes:
        raise PrunewiseError(
            f"{what} gives {out.shape[1]} class scores per image (or pixel), the data have "
            f"{classes} classes; build it for them (--model-args "
            f"'{{\"num_classes\": {classes}}}') or use the data it was made for"
        )


def check_class_names(stored: object, names: Sequence[str], checkpoint: object) -> None:
    """Refuse data whose classes (in output order) are not those a checkpoint was trained on,
    e.g. a renamed class folder, which would score 0 % silently. Old checkpoints (no names
    stored) are not checked."""
    if not isinstance(stored, list | tuple) or list(stored) == list(names):
        return
    differ = [(a, b) for a, b in zip(stored, names, strict=False) if a != b][:3]
    raise PrunewiseError(
        f"{checkpoint} was trained on the classes {listing(stored, 6)}, the data's are "
        f"{listing(names, 6)} (first differences: {differ}); output i means its class i: give it "
        "the data it was trained on"
    )


def check_weight_classes(brought: Brought, names: Sequence[str], *, new_head: bool) -> None:
    """`check_class_names` for the weights a model was brought with (a prunewise checkpoint
    records its classes), unless a new head is trained for the data's classes."""
    if brought.weights is not None and not new_head:
        check_class_names(brought.weights.class_names, names, brought.weights.path)


def _loadable(shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
    """Channels and (height, width) the data loaders should produce for --input-size."""
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise PrunewiseError(
            f"--input-size {','.join(map(str, shape))} cannot be fed with images: give C,H,W "
            "with 1 (grayscale) or 3 (RGB) channels, e.g. 3,32,32 or 3,240,320"
        )
    return shape[0], (shape[1], shape[2])


def _fit_hint(config: InputsConfig, made_for: tuple[int, ...], dataset: str, shape: tuple) -> str:
    if config.input_size is not None:
        if config.checkpoint:
            return f"; the checkpoint was made for {made_for}: drop --input-size"
        return "; pick another --input-size C,H,W (or drop it to use the data's)"
    if config.checkpoint:
        return f"; the checkpoint was made for {made_for}, the {dataset} images are {shape}"
    return (
        f"; the {dataset} images are {shape}: pick a model made for them (`prunewise models`) "
        "or resize the images with --input-size C,H,W"
    )


def bare_model(config: InputsConfig) -> tuple[nn.Module, tuple[int, ...]]:
    """The model `config` names (--model, its --weights) built with its builder's own classes
    and no data read, seeded, in eval mode, and its input shape (--input-size): what a command
    that needs no images writes (`prunewise export` of a float model without --dataset).

    Raises PrunewiseError without an input size, and what `bring_model` raises."""
    if config.input_size is None:
        raise PrunewiseError(
            "the input size of a model built from --model is unknown; pass --input-size "
            "C,H,W (e.g. 3,224,224 for torchvision models), --dataset, or a --checkpoint"
        )
    torch.manual_seed(config.seed)
    brought = bring_model(
        config.model or DEFAULT_MODEL,
        num_classes=None,
        in_channels=config.input_size[0],
        width=config.width,
        model_args=config.model_args,
        weights=config.model_weights,
        trust_pickle=config.model_trust_pickle,
    )
    check_input_fits(brought.model, config.input_size)
    return brought.model.eval(), config.input_size


def load_inputs(
    config: InputsConfig,
    *,
    augment: bool = False,
    offer_scope: bool = False,
    scored: bool = True,
    trained: bool = False,
    out: str | Path | None = None,
) -> Loaded:
    """The model (from the checkpoint, else built from its source with the data's classes and
    channels, seeded) on the device, and data matching its input shape: a folder of images
    and masks for `config.task` segmentation (unset: a checkpoint scored by mIoU). `augment`:
    the data are for training (train, sparsify: classifiers only). `offer_scope`: a model
    that does not take the images as a whole is told about --scope. `scored`: the model's
    output must fit the data and the task (`check_output`; a segmentation model's always, since
    prunewise can score no other; not for a --scope). `trained`: the
    command needs trained weights (a checkpoint, or --weights). `out`: where the command will
    write, checked first (`check_writable`), so it fails before the work.

    Raises PrunewiseError when a file is missing, the classes or channels disagree, the model
    does not take the images (naming the option to change), or a segmentation model would be
    trained as a classifier."""
    if out:
        check_writable(out)
    if config.model and not config.checkpoint:
        parse_source(config.model)  # a misspelt name is said first
    if trained and not (config.checkpoint or config.model_weights):
        raise PrunewiseError(
            "this command scores a trained model: give --checkpoint, or --model with --weights "
            "(a state dict or any file docs/your-model.md lists)"
        )
    if config.model_new_head and not augment:
        raise PrunewiseError(
            "--new-head builds an untrained classifier head, and this command does not train: "
            "train it first (prunewise train --new-head ... --out base.pt, or prunewise run "
            "--new-head) and give the result with --checkpoint"
        )
    device = pick_device(config.device)
    requested = config.input_size
    channels, size, made_for = None, None, ()
    if config.checkpoint:
        ck = load_checkpoint(config.checkpoint)
        model, meta, made_for = ck.model, dict(ck.meta), ck.input_shape
        channels = made_for[0] if made_for[0] in (1, 3) else None
        if len(made_for) == 3:
            size = made_for[1:]
    else:
        meta = {"model": config.model or DEFAULT_MODEL, "width": config.width}
        if config.model_weights is not None:
            meta["weights"] = config.model_weights
        tv = parse_source(meta["model"]).kind == "registry" and (
            model_info(meta["model"]).source == "torchvision"
        )
        if tv:
            channels = 3
            if requested is not None and requested[0] != 3:
                raise PrunewiseError(
                    f"torchvision's {meta['model']} takes 3 input channels, --input-size "
                    f"gives {requested[0]}; use --input-size 3,H,W"
                )
    if requested is not None:
        channels, size = _loadable(requested)
    dataset = config.dataset or meta.get("dataset") or "fashion-mnist"
    data_config = DataConfig(
        name=dataset,
        data_dir=config.data_dir,
        seed=config.seed,
        channels=channels,
        image_size=size,
        augment=augment,
        limit=config.limit,
    )
    task = config.task or ("segmentation" if meta.get("metric") == MIOU else "classification")
    if augment and task != "classification":
        raise PrunewiseError(
            f"train and sparsify train classifiers only; {config.checkpoint} is a {task} "
            f"model (scored by {MIOU}): prunewise run --task {task} trains and channel-prunes "
            "it (fine-grained sparsify has no segmentation training)"
        )
    load = load_segmentation if task == "segmentation" else load_data
    data = load(data_config)
    if not config.checkpoint:
        torch.manual_seed(config.seed)
        brought = bring_model(
            meta["model"],
            # with a scope, the model around it takes the images as built (a detector's
            # transform normalises 3 channels): the builder's own classes and channels, and
            # the images converted to those channels below
            num_classes=None if config.model_scope else data.num_classes,
            in_channels=None if config.model_scope else data.input_shape[0],
            width=meta["width"],
            model_args=config.model_args,
            weights=config.model_weights,
            new_head=config.model_new_head,
            trust_pickle=config.model_trust_pickle,
        )
        model = brought.model
        if task == "classification":
            check_weight_classes(brought, data.class_names, new_head=config.model_new_head)
        if brought.in_channels in (1, 3) and brought.in_channels != data.input_shape[0]:
            if requested is not None:
                raise PrunewiseError(
                    f"{meta['model']} takes {brought.in_channels} input channels (its "
                    f"{'weights say so' if config.model_weights else 'first convolution'}), "
                    f"--input-size gives {requested[0]}"
                )
            data = load(dataclasses.replace(data_config, channels=brought.in_channels))
    meta.setdefault("dataset", dataset)
    meta.setdefault("num_classes", data.num_classes)
    if config.checkpoint and meta.get("num_classes") != data.num_classes:
        raise PrunewiseError(
            f"checkpoint has {meta.get('num_classes')} classes, dataset {dataset} has "
            f"{data.num_classes} ({listing(data.class_names, 6)}); pick the data it was trained on"
            + (f" (--dataset {meta['dataset']})" if meta.get("dataset") else "")
        )
    if task == "classification":
        check_class_names(meta.get("class_names"), data.class_names, config.checkpoint)
        meta.setdefault("class_names", list(data.class_names))
    shape = requested or tuple(data.input_shape)
    hint = _fit_hint(config, made_for, dataset, shape)
    if config.model_scope:
        meta["scope"] = config.model_scope
        hint = (
            f"; --scope {config.model_scope} is given the images themselves, {shape}: name "
            "the part of the model that takes them (a detector's backbone)"
        )
    elif offer_scope:
        hint += scope_hint(model)  # a detector fails here: its backbone takes the images
    loaded = Loaded(
        model.to(device), data, shape, meta, config.model_scope, task, config.batch_size
    )
    out = check_input_fits(loaded.part, shape, hint=hint)
    if (scored or task == "segmentation") and not config.model_scope:  # the part is the model
        what = config.checkpoint or meta["model"]
        check_output(out, data.num_classes, task=task, what=what, size=shape[1:])
    return loaded
