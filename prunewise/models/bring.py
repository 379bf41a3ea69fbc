"""The model a user brings: a source, its builder's arguments and trained weights, in one call.

`bring_model` builds the source (prunewise.models.sources) for the data's classes and input
channels, then, with weights, lets the weights decide the input channels (a stem trained on
grayscale images takes 1 channel, whatever the data loader would give) and loads them
(prunewise.models.weights). The caller feeds data with `Brought.in_channels` channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.models.sources import (
    ModelSource,
    build_from_source,
    first_conv,
    parse_source,
)
from prunewise.models.weights import Weights, fit_weights, read_weights

__all__ = ["Brought", "bring_model", "input_channels", "on_meta", "shapes_only"]

T = TypeVar("T")


@dataclass(frozen=True)
class Brought:
    """A built model, the weights loaded into it (None: random init) and the number of input
    channels its first convolution takes (None when it has none)."""

    model: nn.Module
    weights: Weights | None
    in_channels: int | None


def input_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution (in module order), None without one."""
    found = first_conv(model)
    return int(found[1].in_channels) if found is not None else None


def bring_model(
    source: str | ModelSource,
    *,
    num_classes: int | None,
    in_channels: int | None = None,
    width: float | None = None,
    model_args: str | Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    new_head: bool = False,
    trust_pickle: bool = False,
) -> Brought:
    """Build `source` for `num_classes` classes (None: its builder's own) and `in_channels`
    input channels (where its builder can take them) and load `weights` (module docstring).

    Raises PrunewiseError for a source that does not build, weights that cannot be read or do
    not fit (naming the keys), and a model whose output is not `num_classes` wide is left to
    the caller's input check.
    """
    src = source if isinstance(source, ModelSource) else parse_source(source)
    stored = read_weights(weights, trust_pickle=trust_pickle) if weights is not None else None

    def build(channels: int | None) -> nn.Module:
        return build_from_source(
            src,
            num_classes=num_classes,
            in_channels=channels,
            width=width,
            model_args=model_args,
        )

    model = build(in_channels)
    if stored is not None:
        stored = stored.for_model(model)
        found = first_conv(model)
        wanted = stored.stem_channels(f"{found[0]}.weight") if found is not None else None
        if found is not None and wanted is not None and wanted != found[1].in_channels:
            with contextlib.suppress(PrunewiseError):  # else fit_weights names the mismatch
                model = build(wanted)
        fit_weights(model, stored, new_head=new_head)
    return Brought(model, stored, input_channels(model))


def _refused_on_meta(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) is a tensor op the meta device
    cannot run: one that reads a tensor's values (.item(), .tolist(), a copy to the CPU)."""
    while exc is not None:
        if isinstance(exc, NotImplementedError | RuntimeError) and "meta" in str(exc):
            return True
        exc = exc.__cause__
    return False


def on_meta(build: Callable[[], T]) -> T:
    """`build()` on the meta device (shapes only, nothing allocated). A builder that reads
    tensor values while it builds (torchvision's RegNet computes its widths with tensors and
    takes .tolist()) cannot run there: it is built on the CPU instead, with its weights
    allocated but otherwise the same. Other errors are raised as they are."""
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError, PrunewiseError) as exc:
        if not _refused_on_meta(exc):
            raise
    return build()


def shapes_only(
    source: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    width: float | None = None,
    model_args: str | Mapping[str, Any] | None = None,
) -> tuple[nn.Module, tuple[int, ...]]:
    """`source` built on the meta device (shapes only: no weights, nothing allocated; `on_meta`)
    in eval mode, and its input shape: `input_shape`, else 3 x 224 x 224 for torchvision and
    timm models and 1 x 32 x 32 (Fashion-MNIST as prunewise loads it) for the others; classes
    default to 1000 and 10 likewise. For cost models (the DPU model) that need no weights."""
    from prunewise.models.registry import model_info

    src = parse_source(source)
    tv = src.kind in ("torchvision", "timm") or (
        src.kind == "registry" and model_info(source).source == "torchvision"
    )
    shape = input_shape or ((3, 224, 224) if tv else (1, 32, 32))
    model = on_meta(
        lambda: build_from_source(
            src,
            num_classes=num_classes or (1000 if tv else 10),
            in_channels=shape[0],
            width=width,
            model_args=model_args,
        )
    )
    return model.eval(), tuple(shape)
