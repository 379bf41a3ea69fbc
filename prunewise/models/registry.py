"""One registry of model names: prunewise's own models plus every torchvision classifier.

Prunewise models register themselves with :func:`register_model`; torchvision classification
models are looked up lazily (on the first listing or build, never at import) and are always
built with random initialisation (``weights=None``), so nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from torch import nn

from prunewise.errors import PrunewiseError

__all__ = [
    "MAX_WIDTH",
    "ModelBuilder",
    "ModelInfo",
    "build_model",
    "list_models",
    "model_exists",
    "model_info",
    "register_model",
    "scale_channels",
]

MAX_WIDTH = 4.0
_MIN_SCALED_CHANNELS = 8
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

# torchvision builders whose defaults would not give plain (N, num_classes) logits in train mode
# or would warn about their default initialisation.
_TORCHVISION_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class ModelBuilder(Protocol):
    """A function that builds a prunewise model from keyword-only arguments."""

    def __call__(self, *, num_classes: int, in_channels: int, width: float) -> nn.Module:
        """Build the model with random initialisation."""
        ...


@dataclass(frozen=True)
class ModelInfo:
    """What ``prunewise models`` shows about one registered name."""

    name: str
    source: Literal["prunewise", "torchvision"]
    family: str
    description: str


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: ModelBuilder


_REGISTRY: dict[str, _Entry] = {}
_B = TypeVar("_B", bound=Callable[..., nn.Module])


def _check_free(name: str) -> None:
    if name in _REGISTRY:
        raise PrunewiseError(
            f"model {name!r} is already registered ({_REGISTRY[name].info.description}); "
            "pick another name"
        )


def register_model(name: str, *, family: str, description: str) -> Callable[[_B], _B]:
    """Decorator registering ``fn(*, num_classes, in_channels, width) -> nn.Module`` as ``name``."""
    if not _NAME_RE.match(name):
        raise PrunewiseError(
            f"invalid model name {name!r}: use lowercase letters, digits and underscores, "
            "starting with a letter"
        )
    _check_free(name)

    def decorator(fn: _B) -> _B:
        _check_free(name)
        info = ModelInfo(name=name, source="prunewise", family=family, description=description)
        _REGISTRY[name] = _Entry(info=info, builder=fn)
        return fn

    return decorator


def scale_channels(channels: int, width: float) -> int:
    """Channel count of a prunewise model at a width multiplier: max(8, round(channels * width))."""
    return max(_MIN_SCALED_CHANNELS, round(channels * width))


def _clean_rst(text: str) -> str:
    """Turn the first paragraph of a torchvision docstring into one plain line."""
    first = " ".join(text.strip().split("\n\n")[0].split())
    return re.sub(r"`([^`<]+?)\s*<[^>]*>`_{1,2}", r"\1", first)


@functools.cache
def _torchvision_infos() -> dict[str, ModelInfo]:
    import torchvision

    infos: dict[str, ModelInfo] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        builder = torchvision.models.get_model_builder(name)
        family = builder.__module__.rsplit(".", 1)[-1]
        doc = _clean_rst(builder.__doc__ or "") or f"torchvision {name}"
        infos[name] = ModelInfo(name=name, source="torchvision", family=family, description=doc)
    return infos


def list_models() -> list[ModelInfo]:
    """Every model name: prunewise models in registration order, then torchvision ones by name."""
    own = [entry.info for entry in _REGISTRY.values()]
    vision = [info for name, info in sorted(_torchvision_infos().items()) if name not in _REGISTRY]
    return own + vision


def model_exists(name: str) -> bool:
    """Whether ``name`` is a prunewise model or a torchvision classification model."""
    return name in _REGISTRY or name in _torchvision_infos()


def model_info(name: str) -> ModelInfo:
    """What ``prunewise models`` shows about ``name``; an error with close matches if unknown."""
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry.info
    info = _torchvision_infos().get(name)
    if info is None:
        raise _unknown_model(name)
    return info


def _unknown_model(name: str) -> PrunewiseError:
    names = [info.name for info in list_models()]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return PrunewiseError(f"unknown model {name!r}{hint}; run `prunewise models` to list them all")


def _check_common(num_classes: object, in_channels: object) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise PrunewiseError(
            f"num_classes must be an integer >= 2, got {num_classes!r}; pass the dataset's "
            "number of classes"
        )
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise PrunewiseError(
            f"in_channels must be an integer >= 1, got {in_channels!r}; pass 1 for grayscale "
            "or 3 for RGB input"
        )


def _check_width(width: object) -> float:
    if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width <= MAX_WIDTH:
        raise PrunewiseError(
            f"width must be a number in (0, {MAX_WIDTH:g}], got {width!r}; e.g. 0.25 for a "
            "quarter of the channels or 1.0 for the standard model"
        )
    return float(width)


def _build_torchvision(
    name: str, *, num_classes: int, in_channels: int, width: float | None
) -> nn.Module:
    if width is not None:
        raise PrunewiseError(
            f"width applies to prunewise models only, not torchvision's {name!r}; drop --width "
            "or pick a prunewise model (`prunewise models --source prunewise`)"
        )
    if in_channels != 3:
        raise PrunewiseError(
            f"torchvision models take 3-channel input, got in_channels={in_channels} for "
            f"{name!r}; build with in_channels=3 (the data loader can replicate a grayscale "
            "channel with channels=3)"
        )
    import torchvision

    kwargs = _TORCHVISION_KWARGS.get(name, {})
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def build_model(
    name: str, *, num_classes: int = 10, in_channels: int = 3, width: float | None = None
) -> nn.Module:
    """Build a randomly initialised model by registered name (``width`` None means 1.0)."""
    if not isinstance(name, str):
        raise PrunewiseError(
            f"a model name must be a string, got {type(name).__name__} {name!r}; e.g. "
            "'vgg13_bn_small' (`prunewise models` lists them)"
        )
    _check_common(num_classes, in_channels)
    entry = _REGISTRY.get(name)
    if entry is not None:
        resolved = 1.0 if width is None else _check_width(width)
        return entry.builder(num_classes=num_classes, in_channels=in_channels, width=resolved)
    if name in _torchvision_infos():
        return _build_torchvision(
            name, num_classes=num_classes, in_channels=in_channels, width=width
        )
    raise _unknown_model(name)
