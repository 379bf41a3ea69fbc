"""Trained weights a user brings (`--weights FILE`), read without running code.

Accepted: a plain state dict (`torch.save(model.state_dict(), f)`), a dict holding one under a
usual key (`state_dict`, `model`, `model_state_dict`, `ema`, `state_dict_ema`, `model_ema`,
`net`), a whole model pickled with `torch.save(model)` (at the top or under one of those keys,
as Ultralytics saves it), a prunewise checkpoint, or a `.safetensors` file (timm's and the
Hugging Face Hub's format; needs the `safetensors` package). A file is read with
`torch.load(weights_only=True)`; one that names other classes (a training script's
`argparse.Namespace`, a NumPy scalar, a pickled model) is read with
`prunewise.models.unpickle.load_without_code`, which builds none of them, so nothing in the
file runs. A `module.` prefix (DistributedDataParallel, DataParallel) or `_orig_mod.`
(torch.compile) on every key is stripped.

`fit_weights` loads them into a model. The model's weights may sit under a prefix in the file
(PyTorch Lightning's `model.`: a training wrapper holding the model as an attribute), or the
file may hold the weights of a part the model keeps under a prefix (your class wrapping a timm
model as `self.backbone`); a BatchNorm's `num_batches_tracked`, absent from older state dicts,
is taken from the model. Every other mismatch is one line: the first few missing, unexpected or
mis-shaped keys, and for a classifier head of another size or a stem for other input channels,
what to pass instead.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunewise.errors import PrunewiseError, first_line, listing
from prunewise.io import CHECKPOINT_FORMAT, check_finite, foreign_kind, load_state
from prunewise.models.unpickle import load_without_code, module_state
from prunewise.torchfile import torch_load

__all__ = ["STATE_KEYS", "Weights", "classifier_head", "fit_weights", "read_weights"]

STATE_KEYS = (
    "state_dict",
    "model",
    "model_state_dict",
    "ema",
    "state_dict_ema",
    "model_ema",
    "net",
)
_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 3


@dataclass(frozen=True)
class Weights:
    """A state dict read from `path`; `where` says where in the file it was found;
    `class_names`: the classes of its outputs, in order, where the file records them (a
    prunewise checkpoint), else None."""

    path: Path
    state: dict[str, torch.Tensor]
    where: str
    class_names: tuple[str, ...] | None = None

    def for_model(self, model: nn.Module) -> Weights:
        """These weights keyed by `model`'s names (module docstring: a prefix on either side);
        unchanged when they are already, or when no prefix fits. Raises PrunewiseError when
        the model's weights sit under several prefixes (a teacher and a student)."""
        state, prefix = _aligned(list(model.state_dict()), self.state)
        if not prefix:
            return self
        return Weights(self.path, state, f"{self.where}, {prefix}", self.class_names)

    def stem_channels(self, key: str) -> int | None:
        """Input channels of the convolution weight `key` in this file, if it has it."""
        w = self.state.get(key)
        return int(w.shape[1]) if w is not None and w.dim() >= 3 else None


def _is_state(value: object) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) for k in value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _unpickle(path: Path) -> object:
    """`torch.load` as it was before weights-only loading: runs code named by the file (only
    with --trust-pickle)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as error:
        raise PrunewiseError(
            f"{path} is a pickled model whose code is not importable ({error}); run from the "
            "folder that holds it or add that folder to PYTHONPATH, or save a state dict"
        ) from error
    except Exception as error:
        raise PrunewiseError(
            f"{path} cannot be unpickled: {str(error).splitlines()[0][:200]}"
        ) from error


def _find_state(obj: object) -> tuple[dict[str, torch.Tensor], str] | None:
    if _is_state(obj):
        return dict(obj), "the file"  # type: ignore[call-overload]
    pickled = dict(obj.state_dict()) if isinstance(obj, nn.Module) else module_state(obj)
    if pickled is not None:
        return pickled, "a pickled model"
    if isinstance(obj, dict):
        if obj.get("format") == CHECKPOINT_FORMAT:
            state = obj.get("state_dict")
            return (dict(state), "a prunewise checkpoint") if _is_state(state) else None
        found = [(k, got) for k in STATE_KEYS if k in obj and (got := _state_of(obj[k], k))]
        if found:
            (_, (state, where)), others = found[0], [k for k, _ in found[1:]]
            also = f" (read first; the file also holds {listing(others, 3)})" if others else ""
            return state, where + also
    return None


def _state_of(value: object, key: str) -> tuple[dict[str, torch.Tensor], str] | None:
    """The state dict under `key` of a checkpoint dict, and where it was, if it holds one."""
    if isinstance(value, nn.Module):
        return dict(value.state_dict()), f"key {key!r}"
    if _is_state(value):
        return dict(value), f"key {key!r}"  # type: ignore[call-overload]
    pickled = module_state(value)
    return (pickled, f"the model pickled under key {key!r}") if pickled is not None else None


def _is_safetensors(path: Path) -> bool:
    """A `.safetensors` file, or one that starts as such a file does (an 8-byte header length,
    then the JSON header)."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    size = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:9] == b"{" and 2 <= size < 1 << 30


def _read_safetensors(path: Path) -> Weights:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise PrunewiseError(
            f"{path} is a safetensors file: install the safetensors package (pip install "
            "safetensors; timm brings it) or save the weights with torch.save"
        ) from exc
    try:
        state = load_file(path, device="cpu")
    except Exception as exc:
        raise PrunewiseError(
            f"weights file {path} cannot be read as safetensors: {str(exc).splitlines()[0][:200]}"
        ) from exc
    if not state:
        raise PrunewiseError(f"{path} holds no tensor")
    return Weights(path, _strip(dict(state)), "a safetensors file")


def _load(path: Path, trust_pickle: bool) -> tuple[object, bool]:
    """What the file holds (torch.load, weights only; else without building any class it
    names), and whether it needed the second."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch_load(path), False
    except PrunewiseError:
        raise
    except pickle.UnpicklingError:
        pass
    except Exception as exc:
        if (kind := foreign_kind(path)) is not None:
            raise PrunewiseError(f"weights file {path} is {kind}") from exc
        with path.open("rb") as f:
            head = f.read(4)
        if not (head.startswith((b"PK\x03\x04", b"\x80"))):  # torch.save's zip, or a pickle
            raise PrunewiseError(
                f"weights file {path} is not one torch.save or safetensors wrote (it starts "
                f"with {head!r}); save the state dict with torch.save(model.state_dict(), path)"
            ) from exc
        raise PrunewiseError(
            f"weights file {path} cannot be read by torch.load: {str(exc).splitlines()[0][:200]}"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_without_code(path), True
    except PrunewiseError:
        raise
    except Exception as exc:
        if (kind := foreign_kind(path)) is not None:
            raise PrunewiseError(f"weights file {path} is {kind}") from exc
        if trust_pickle:
            return _unpickle(path), True
        raise PrunewiseError(
            f"weights file {path} is not a file torch.save wrote (truncated or damaged)"
        ) from exc


def read_weights(path: str | Path, *, trust_pickle: bool = False) -> Weights:
    """The state dict in `path` (module docstring). Raises PrunewiseError for a missing,
    empty or damaged file, or one without a state dict. `trust_pickle` unpickles a file
    whose weights cannot be found without building its classes (a class that stores its
    tensors its own way), which runs the file's code."""
    path = Path(path)
    if path.is_dir():
        raise PrunewiseError(f"weights file {path} is a directory; give the file inside it")
    if not path.is_file():
        raise PrunewiseError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise PrunewiseError(f"weights file {path} is empty")
    if _is_safetensors(path):
        return _read_safetensors(path)
    obj, pickled = _load(path, trust_pickle)
    try:
        found = _find_state(obj)
    except (TypeError, AttributeError, ValueError, KeyError, RecursionError) as exc:
        raise PrunewiseError(
            f"weights file {path} holds a pickled object whose tensors cannot be read as a "
            f"state dict ({first_line(exc)}); save the model's state dict instead"
        ) from exc
    if found is None and pickled and trust_pickle:
        found = _find_state(_unpickle(path))
    if found is None:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        hint = (
            "; if you trust the file and its classes keep their tensors their own way, "
            "--trust-pickle unpickles it, running its code"
        )
        raise PrunewiseError(
            f"{path} holds no state dict (looked at the file and under {', '.join(STATE_KEYS)}; "
            f"found {keys}){hint if pickled else ''}"
        )
    state, where = found
    return Weights(path, _strip(state), where, _class_names(obj))


def _class_names(obj: object) -> tuple[str, ...] | None:
    """The class names a prunewise checkpoint's metadata records (None for other files)."""
    if not (isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT):
        return None
    try:
        names = json.loads(obj["meta"]).get("class_names")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    ok = isinstance(names, list) and all(isinstance(n, str) for n in names)
    return tuple(names) if ok else None


def _aligned(
    wanted: list[str], have: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str]:
    """`have` re-keyed to the names in `wanted` where one prefix fits all of them, and that
    prefix in words ("" when none is needed or none fits)."""
    need = [k for k in wanted if not k.endswith("num_batches_tracked")]
    if not need or all(k in have for k in need):
        return have, ""
    anchor = max(need, key=len)
    outer = {h[: -len(anchor)] for h in have if h.endswith("." + anchor)}
    fits = sorted(p for p in outer if all(p + k in have for k in need))
    if len(fits) > 1:
        raise PrunewiseError(
            f"the model's weights are in the file {len(fits)} times, under "
            f"{', '.join(map(repr, fits))}: save the state dict of the one you want"
        )
    if fits:
        p = fits[0]
        return {k[len(p) :]: v for k, v in have.items() if k.startswith(p)}, f"under {p!r}"
    inner = {anchor[: -len(h)] for h in have if anchor.endswith("." + h)}
    for p in sorted(inner, key=len):
        if all(k.startswith(p) and k[len(p) :] in have for k in need):
            return {p + k: v for k, v in have.items()}, f"as the model's {p[:-1]!r}"
    return have, ""


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def _weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    ]


def classifier_head(model: nn.Module) -> str:
    """The name of `model`'s classifier head: its last Linear or convolution in module order
    (torchvision's `fc` / `classifier.N`, timm's `head.fc`). Raises PrunewiseError for a model
    without one."""
    layers = _weighted_layers(model)
    if not layers or not layers[-1][0]:
        raise PrunewiseError(
            f"{type(model).__name__} has no Linear or convolution to take for its classifier head"
        )
    return layers[-1][0]


def _head_message(model: nn.Module, key: str, have: tuple, want: tuple, path: Path) -> str | None:
    """The words for a mis-shaped classifier head or stem, or None for another layer."""
    module_name = key.rpartition(".")[0]
    layers = _weighted_layers(model)
    if not layers:
        return None
    if module_name == layers[-1][0] and have[1:] == want[1:] and have[0] != want[0]:
        return (
            f"the weights in {path} have a {have[0]}-class head ({key}), the model is built for "
            f"{want[0]} classes (the data's): pass --new-head (new_head=True) to train a "
            "head for them from these weights, use the dataset they were trained on, or build "
            f"the model for {have[0]} classes (num_classes=, --model-args "
            f"'{{\"num_classes\": {have[0]}}}') with data of {have[0]} classes"
        )
    if module_name == layers[0][0] and len(have) > 2 and have[1] != want[1] and have[0] == want[0]:
        return (
            f"the weights in {path} take {have[1]} input channels ({key}), the model {want[1]}: "
            f"pass --input-size {have[1]},H,W (in_channels={have[1]})"
        )
    return None


def fit_weights(model: nn.Module, weights: Weights, *, new_head: bool = False) -> None:
    """Load `weights` into `model` (strict; with `new_head`, all but the `classifier_head`'s,
    which keeps the model's own initialisation); raises PrunewiseError naming the first few
    missing, unexpected or mis-shaped keys, the head / stem that differs, or a weight or
    normalisation statistic that holds NaN or infinity."""
    want = dict(model.state_dict())
    weights = weights.for_model(model)
    have = {k: want[k] for k in want if k.endswith("num_batches_tracked")} | weights.state
    if new_head:
        head = classifier_head(model) + "."
        have = {k: v for k, v in have.items() if not k.startswith(head)}
        have |= {k: v for k, v in want.items() if k.startswith(head)}
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shaped = [k for k in want if k in have and _shape(have[k]) != _shape(want[k])]
    where = f"{weights.path} ({weights.where})"
    layers = {k.rpartition(".")[0] for k in shaped}
    if len(layers) == 1 and not missing and not extra:  # only the head or the stem differs
        key = next(k for k in shaped if k.endswith("weight")) if len(shaped) > 1 else shaped[0]
        message = _head_message(model, key, _shape(have[key]), _shape(want[key]), weights.path)
        if message is not None:
            raise PrunewiseError(message)
    if missing or extra or shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({listing(missing, _SHOWN)})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({listing(extra, _SHOWN)})")
        if shaped:
            k = shaped[0]
            parts.append(
                f"{len(shaped)} of another shape ({k}: {_shape(have[k])} in the file, "
                f"{_shape(want[k])} in the model)"
            )
        raise PrunewiseError(
            f"the weights in {where} do not fit the model: {'; '.join(parts)}; check the model "
            "and its arguments (--model, --model-args; model_args=)"
        )
    learned = {n for n, _ in model.named_parameters()}  # and normalisation statistics:
    learned |= {k for k in want if k.endswith(("running_mean", "running_var"))}  # not masks
    check_finite({k: v for k, v in have.items() if k in learned}, f"weights file {where}")
    dtypes = {k: v.dtype for k, v in want.items()}
    load_state(model, {k: v.to(dtypes[k]) for k, v in have.items()})
