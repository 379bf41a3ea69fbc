"""Where a model comes from: a registered name, torchvision, timm, or the user's own code.

A model source is a string, the same on every command (`--model`) and in a run's TOML
(`[model] name`):

- `vgg13_bn_small`, `resnet18`: a registered name (`prunewise models`);
- `torchvision:NAME`: any torchvision builder (classification, segmentation, detection,
  video), always with `weights=None` and `weights_backbone=None`: nothing is downloaded;
- `timm:NAME`: `timm.create_model(NAME, pretrained=False)` (timm is an optional extra);
- `path/to/net.py:factory` or `package.module:factory`: a class or function that returns an
  `nn.Module`.

Keyword arguments (`--model-args` JSON, `[model.args]` in TOML) go to the builder. Where the
builder takes them and they are not given, the number of classes (`num_classes`) and the input
channels (`in_channels` or `in_chans`) come from the data; a torchvision model given another
number of input channels gets its first convolution rebuilt for it.

Building from a file or module runs that code: it is the user's own, named on the command
line. Nothing prunewise writes needs it again (checkpoints hold no code).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.models.registry import build_model, model_exists, model_info

__all__ = [
    "ModelSource",
    "SourceKind",
    "build_from_source",
    "first_conv",
    "parse_model_args",
    "parse_source",
]

SourceKind = Literal["registry", "torchvision", "timm", "file", "module"]
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHANNEL_KEYS = ("in_channels", "in_chans")
_TIMM_HINT = "install it with `pip install timm` (or `pip install prunewise[timm]`)"


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source: its kind, the name or path, and the factory (file / module)."""

    kind: SourceKind
    name: str
    factory: str | None = None

    def __str__(self) -> str:
        prefix = {"torchvision": "torchvision:", "timm": "timm:"}.get(self.kind, "")
        suffix = f":{self.factory}" if self.factory else ""
        return f"{prefix}{self.name}{suffix}"


def parse_source(text: str) -> ModelSource:
    """The source a `--model` string names (module docstring). Raises PrunewiseError for a
    string that names none, with close matches for a misspelt registered name."""
    if not isinstance(text, str) or not text.strip():
        raise PrunewiseError(
            f"a model must be a non-empty string, got {text!r}; e.g. vgg13_bn_small, "
            "torchvision:resnet18, timm:resnet18 or net.py:Net"
        )
    text = text.strip()
    for prefix in ("torchvision", "timm"):
        if text.startswith(prefix + ":"):
            name = text[len(prefix) + 1 :]
            if not _IDENT_RE.match(name):
                raise PrunewiseError(f"{text!r}: give a {prefix} model name after '{prefix}:'")
            return ModelSource(prefix, name)  # type: ignore[arg-type]
    if ":" in text:
        where, factory = text.rsplit(":", 1)
        if not _IDENT_RE.match(factory):
            raise PrunewiseError(
                f"{text!r}: after the last ':' give the name of a class or function in "
                "the file or module (e.g. net.py:Net)"
            )
        if where.endswith(".py") or "/" in where or "\\" in where:
            return ModelSource("file", where, factory)
        if _MODULE_RE.match(where):
            return ModelSource("module", where, factory)
        raise PrunewiseError(
            f"{text!r} names neither a Python file (path/to/net.py:Net) nor a module "
            "(package.module:Net)"
        )
    if not model_exists(text):
        model_info(text)  # raises, with close matches
    return ModelSource("registry", text)


def parse_model_args(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """`--model-args` (a JSON object, or an already parsed mapping) as a dict."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        value: Any = dict(text)
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PrunewiseError(
                f"--model-args must be a JSON object such as '{{\"num_classes\": 10}}', got "
                f"{text!r} ({exc.msg})"
            ) from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise PrunewiseError(f"--model-args must be a JSON object of names to values, got {text!r}")
    return value


def first_conv(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first convolution in module order (the stem of torchvision and timm models)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return name, module
    return None


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _adapt_stem(model: nn.Module, in_channels: int, what: str) -> nn.Module:
    """Rebuild the first convolution for `in_channels` inputs (random weights)."""
    found = first_conv(model)
    if found is None:
        raise PrunewiseError(f"{what} has no convolution to take {in_channels} input channels")
    name, conv = found
    if conv.in_channels == in_channels:
        return model
    if conv.groups != 1:
        raise PrunewiseError(
            f"{what}: its first convolution {name} is grouped; it cannot be rebuilt for "
            f"{in_channels} input channels (use --input-size {conv.in_channels},H,W)"
        )
    new = type(conv)(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    _set_module(model, name, new.to(conv.weight.device, conv.weight.dtype))
    return model


def _accepts(fn: Callable[..., Any], key: str, *, via_kwargs: bool = False) -> bool:
    """Whether `fn` names parameter `key` (or, with `via_kwargs`, takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name == key or (via_kwargs and p.kind is inspect.Parameter.VAR_KEYWORD) for p in params
    )


def _user_args(
    fn: Callable[..., Any], args: dict[str, Any], num_classes: int | None, in_channels: int | None
) -> dict[str, Any]:
    """`args`, plus num_classes and in_channels / in_chans where `fn` names them."""
    out = dict(args)
    if num_classes is not None and "num_classes" not in out and _accepts(fn, "num_classes"):
        out["num_classes"] = num_classes
    if in_channels is not None and not any(k in out for k in _CHANNEL_KEYS):
        for key in _CHANNEL_KEYS:
            if _accepts(fn, key):
                out[key] = in_channels
                break
    return out


def _load_file(path_text: str) -> Any:
    """Import a Python file under a private module name; its folder is on sys.path only while
    it runs (so it can import its neighbours)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise PrunewiseError(f"model file {path} does not exist")
    if path.suffix != ".py":
        raise PrunewiseError(f"model file {path} is not a .py file")
    resolved = path.resolve()
    name = "prunewise_user_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PrunewiseError(f"model file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    folder = str(resolved.parent)
    sys.modules[name] = module
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PrunewiseError(f"model file {path} fails to import: {_first_line(exc)}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise PrunewiseError(
            f"module {name} is not importable ({exc}); install it, or name a file instead "
            "(path/to/net.py:Net)"
        ) from exc
    except Exception as exc:
        raise PrunewiseError(f"module {name} fails to import: {_first_line(exc)}") from exc


def _factory(source: ModelSource) -> Callable[..., Any]:
    module = _load_file(source.name) if source.kind == "file" else _import_module(source.name)
    fn = getattr(module, str(source.factory), None)
    if fn is None:
        names = [n for n in vars(module) if not n.startswith("_")]
        close = difflib.get_close_matches(str(source.factory), names, n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise PrunewiseError(f"{source.name} has no {source.factory!r}{hint}")
    if not callable(fn):
        raise PrunewiseError(f"{source}: {source.factory!r} is not a class or function")
    return fn


def _call(what: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = fn(**kwargs)
    except PrunewiseError:
        raise
    except Exception as exc:
        shown = json.dumps(kwargs, default=str)
        raise PrunewiseError(f"{what}({shown}) fails: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise PrunewiseError(f"{what} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _torchvision(name: str, args: dict[str, Any], num_classes: int | None) -> nn.Module:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        names = torchvision.models.list_models()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise PrunewiseError(f"torchvision has no model {name!r}{hint}") from None
    kwargs = {"weights": None, **args}
    if _accepts(builder, "weights_backbone"):
        kwargs.setdefault("weights_backbone", None)
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    if (
        num_classes is not None
        and "num_classes" not in kwargs
        and _accepts(builder, "num_classes", via_kwargs=True)
    ):
        kwargs["num_classes"] = num_classes
    return _call(f"torchvision {name}", builder, kwargs)


def _timm(name: str, args: dict[str, Any], num_classes: int | None, channels: int | None) -> Any:
    try:
        import timm
    except ImportError:
        raise PrunewiseError(
            f"timm:{name} needs timm, which is not installed; {_TIMM_HINT}"
        ) from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise PrunewiseError(f"timm has no model {name!r}{hint}")
    kwargs = {"model_name": name, "pretrained": False, **args}
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if channels is not None:
        kwargs.setdefault("in_chans", channels)
    return _call(f"timm {name}", timm.create_model, kwargs)


def build_from_source(
    source: str | ModelSource,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    width: float | None = None,
    model_args: str | Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the model a source names, randomly initialised (module docstring).

    `num_classes` and `in_channels` (from the data) are passed where the builder takes them
    and `model_args` does not set them; `width` is for prunewise's own models only. Raises
    PrunewiseError naming what failed (an unknown name, a missing file or factory, a builder
    that raises or does not return an nn.Module).
    """
    src = source if isinstance(source, ModelSource) else parse_source(source)
    args = parse_model_args(model_args)
    if src.kind != "registry" and width is not None:
        raise PrunewiseError(
            f"width applies to prunewise models only, not {src}; drop --width (or put the "
            "builder's own argument in --model-args)"
        )
    if src.kind == "registry":
        if args:
            raise PrunewiseError(
                f"--model-args are for torchvision:, timm:, file and module sources; "
                f"{src.name} is a registered model (its options: --width)"
            )
        kwargs = {"num_classes": num_classes, "in_channels": in_channels}
        return build_model(src.name, width=width, **{k: v for k, v in kwargs.items() if v})
    if src.kind == "torchvision":
        model = _torchvision(src.name, args, num_classes)
        if in_channels and not any(k in args for k in _CHANNEL_KEYS):
            model = _adapt_stem(model, in_channels, str(src))
        return model
    if src.kind == "timm":
        return _timm(src.name, args, num_classes, in_channels)
    fn = _factory(src)
    return _call(str(src), fn, _user_args(fn, args, num_classes, in_channels))
