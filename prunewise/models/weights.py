"""Trained weights a user brings (`--weights FILE`), read without running code.

Accepted: a plain state dict (`torch.save(model.state_dict(), f)`), a dict holding one under a
usual key (`state_dict`, `model`, `model_state_dict`, `ema`, `state_dict_ema`, `model_ema`,
`net`), or a prunewise checkpoint. Everything is read with `torch.load(weights_only=True)`; a
file holding a pickled whole model is refused unless the caller trusts it (`--trust-pickle`),
since unpickling runs code from the file. A `module.` prefix (DistributedDataParallel,
DataParallel) or `_orig_mod.` (torch.compile) on every key is stripped.

`fit_weights` loads them into a model and turns every mismatch into one line: the first few
missing, unexpected or mis-shaped keys, and for a classifier head of another size or a stem
for other input channels, what to pass instead.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.io import CHECKPOINT_FORMAT

__all__ = ["STATE_KEYS", "Weights", "fit_weights", "read_weights"]

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
    """A state dict read from `path`; `where` says where in the file it was found."""

    path: Path
    state: dict[str, torch.Tensor]
    where: str

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


def _unpickle(path: Path, trust_pickle: bool, exc: BaseException) -> dict[str, torch.Tensor]:
    if not trust_pickle:
        raise PrunewiseError(
            f"{path} holds pickled Python objects (a whole model saved with torch.save(model)?); "
            "loading it would run code from the file: save model.state_dict() instead, or pass "
            "--trust-pickle if you trust this file"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as error:
        raise PrunewiseError(
            f"{path} is a pickled model whose code is not importable ({error}); run from the "
            "folder that holds it or add that folder to PYTHONPATH, or save a state dict"
        ) from error
    except Exception as error:
        raise PrunewiseError(
            f"{path} cannot be unpickled: {str(error).splitlines()[0][:200]}"
        ) from error
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    found = _find_state(obj)
    if found is None:
        raise PrunewiseError(f"{path} holds a {type(obj).__name__}, neither a model nor weights")
    return found[0]


def _find_state(obj: object) -> tuple[dict[str, torch.Tensor], str] | None:
    if _is_state(obj):
        return dict(obj), "the file"  # type: ignore[call-overload]
    if isinstance(obj, dict):
        if obj.get("format") == CHECKPOINT_FORMAT:
            state = obj.get("state_dict")
            return (dict(state), "a prunewise checkpoint") if _is_state(state) else None
        for key in STATE_KEYS:
            value = obj.get(key)
            if isinstance(value, nn.Module):
                return dict(value.state_dict()), f"key {key!r}"
            if _is_state(value):
                return dict(value), f"key {key!r}"
    return None


def read_weights(path: str | Path, *, trust_pickle: bool = False) -> Weights:
    """The state dict in `path` (module docstring). Raises PrunewiseError for a missing,
    empty or damaged file, a pickled model without `trust_pickle`, or a file without one."""
    path = Path(path)
    if not path.is_file():
        raise PrunewiseError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise PrunewiseError(f"weights file {path} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipfile.is_zipfile(path) and not trust_pickle:
            raise PrunewiseError(
                f"weights file {path} is not a file torch.save wrote (truncated or damaged)"
            ) from exc
        return Weights(path, _strip(_unpickle(path, trust_pickle, exc)), "a pickled model")
    except Exception as exc:
        raise PrunewiseError(
            f"weights file {path} cannot be read by torch.load: {str(exc).splitlines()[0][:200]}"
        ) from exc
    found = _find_state(obj)
    if found is None:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise PrunewiseError(
            f"{path} holds no state dict (looked at the file and under {', '.join(STATE_KEYS)}; "
            f"found {keys})"
        )
    state, where = found
    return Weights(path, _strip(state), where)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def _head_message(model: nn.Module, key: str, have: tuple, want: tuple, path: Path) -> str | None:
    """The words for a mis-shaped classifier head or stem, or None for another layer."""
    module_name = key.rpartition(".")[0]
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    ]
    if not layers:
        return None
    if module_name == layers[-1][0] and have[1:] == want[1:] and have[0] != want[0]:
        return (
            f"the weights in {path} have a {have[0]}-class head ({key}), the model is built for "
            f"{want[0]} classes (the data's): use the dataset they were trained on, or pass "
            f"--model-args '{{\"num_classes\": {have[0]}}}' with data of {have[0]} classes"
        )
    if module_name == layers[0][0] and len(have) > 2 and have[1] != want[1] and have[0] == want[0]:
        return (
            f"the weights in {path} take {have[1]} input channels ({key}), the model {want[1]}: "
            f"pass --input-size {have[1]},H,W"
        )
    return None


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")


def fit_weights(model: nn.Module, weights: Weights) -> None:
    """Load `weights` into `model` (strict); raises PrunewiseError naming the first few
    missing, unexpected or mis-shaped keys, or the head / stem that differs."""
    want = dict(model.state_dict())
    have = weights.state
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
            parts.append(f"{len(missing)} missing ({_few(missing)})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({_few(extra)})")
        if shaped:
            k = shaped[0]
            parts.append(
                f"{len(shaped)} of another shape ({k}: {_shape(have[k])} in the file, "
                f"{_shape(want[k])} in the model)"
            )
        raise PrunewiseError(
            f"the weights in {where} do not fit the model: {'; '.join(parts)}; check --model "
            "and --model-args"
        )
    dtypes = {k: v.dtype for k, v in want.items()}
    model.load_state_dict({k: v.to(dtypes[k]) for k, v in have.items()}, strict=True)
