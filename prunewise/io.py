"""Files: atomic writes, JSON, and prunewise checkpoints (architecture + weights)."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from prunewise.errors import PrunewiseError
from prunewise.given import tied_names
from prunewise.graph.serialize import describe, rebuild
from prunewise.graph.trace import propagate_shapes, trace
from prunewise.torchfile import torch_load

__all__ = [
    "CHECKPOINT_FORMAT",
    "SCOPED_FORMAT",
    "Checkpoint",
    "atomic_write_bytes",
    "atomic_write_json",
    "cannot_write",
    "check_finite",
    "check_writable",
    "checkpoint_from_payload",
    "checkpoint_payload",
    "foreign_kind",
    "load_checkpoint",
    "load_state",
    "overlay",
    "read_json",
    "read_torch_file",
    "save_checkpoint",
    "save_torch",
    "tie",
]

CHECKPOINT_FORMAT = "prunewise-checkpoint/1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True) -> Any:
    """`model.load_state_dict(state, strict=strict)`, giving `state` the layers' state-dict
    versions the model's own code writes when it carries none (a plain dict, a copy, a
    safetensors file): a layer with a versioned loader (torchvision's MNASNet) refuses a state
    without them. Returns what load_state_dict returns."""
    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    return model.load_state_dict(state, strict=strict)


def cannot_write(path: str | Path, exc: OSError) -> str:
    """The message for a failed write: a full disk asks for space (what was written stays; a
    run or sparsify job goes on with --resume), anything else for another location."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"cannot write {path}: {exc.strerror or exc}; free some space and run again (a run "
            "or sparsify job goes on where it stopped with --resume)"
        )
    return f"cannot write {path}: {exc.strerror or exc}; pick a writable location"


def check_writable(*paths: str | Path | None, files: bool = False) -> None:
    """Refuse, before any work, an output (file or folder) of `paths` (None: not asked for)
    that cannot be created: a temporary folder is made and removed in its nearest existing
    folder, so a read-only file system or /proc fails here rather than after the
    computation. With `files`, the outputs are files, so an existing folder is refused too.
    Leaves nothing behind. Raises PrunewiseError naming the path."""
    for path in paths:
        if path is None:
            continue
        if files and Path(path).is_dir():
            raise PrunewiseError(f"cannot write {path}: it is a folder; give a file name")
        _check_writable(Path(path))


def _check_writable(path: Path) -> None:
    where = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if where == path and not path.is_dir():
        return  # an existing file: the command says whether it takes a file or a folder
    if not where.is_dir():
        raise PrunewiseError(f"cannot write {path}: {where} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=where, prefix=".prunewise-check-").cleanup()
    except OSError as exc:
        raise PrunewiseError(cannot_write(path, exc)) from exc


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    if path.is_dir():
        raise PrunewiseError(f"cannot write {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise PrunewiseError(cannot_write(path, exc)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PrunewiseError(cannot_write(path, exc)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a clear message when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PrunewiseError(f"{path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PrunewiseError(f"{path} is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise PrunewiseError(f"{path} is nested too deeply to be a prunewise record") from exc


def overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`base` with the values of `top` (settings read from files), nested tables key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = value
    return out


class Checkpoint:
    """A loaded checkpoint: the rebuilt model and what was saved beside it."""

    def __init__(self, model: fx.GraphModule, meta: dict[str, Any]) -> None:
        self.model = model
        self.meta = meta

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) the model was built for."""
        return tuple(self.meta["input_shape"])


_EXPANDED_LIMIT = 1 << 24
"""Elements above which a tensor stored as a broadcast view (a stride of 0) is refused: a tiny
file would otherwise make every check allocate the whole tensor."""


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise PrunewiseError naming the first tensor that is not stored values (a meta or sparse
    tensor, a large broadcast view) or, for floating point, holds NaN or infinity."""
    for name, t in tensors.items():
        if t.is_meta or t.layout is not torch.strided:
            kind = "meta" if t.is_meta else str(t.layout).removeprefix("torch.")
            raise PrunewiseError(f"{where}: tensor {name!r} is a {kind} tensor, not stored values")
        repeated = any(s == 0 and d > 1 for s, d in zip(t.stride(), t.shape, strict=True))
        if repeated and t.numel() > _EXPANDED_LIMIT:
            raise PrunewiseError(
                f"{where}: tensor {name!r} of {t.numel():,} elements is one stored value "
                "repeated (a broadcast view), not weights; refused"
            )
        if not (t.is_floating_point() or t.is_complex()):
            continue
        try:
            finite = bool(torch.isfinite(t).all())
        except (RuntimeError, NotImplementedError):  # float8 and other narrow types
            finite = bool(torch.isfinite(t.float()).all())
        if finite:
            continue
        kind = "NaN" if bool(torch.isnan(t).any()) else "an infinite value"
        raise PrunewiseError(
            f"{where}: tensor {name!r} holds {kind}; the model is broken (a diverged training "
            "run?), so nothing it computes would mean anything: retrain it or take an earlier "
            "checkpoint"
        )


def _graph_constants(gm: fx.GraphModule, state: Mapping[str, torch.Tensor]) -> dict:
    """Tensors that get_attr nodes read but the state dict does not hold (traced constants)."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in state:
            value = _attr(gm, node.target)
            if isinstance(value, torch.Tensor):
                out[node.target] = value.detach().cpu()
    return out


def _attr(root: nn.Module, path: str) -> object:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _check_reloads(arch: dict, state: Mapping[str, torch.Tensor], constants: dict) -> None:
    """Rebuild the description on the meta device and compare its tensors with `state`."""
    with torch.device("meta"):
        rebuilt = rebuild(arch, {k: v.to("meta") for k, v in {**state, **constants}.items()})
    want = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want == have:
        return
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shaped = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    detail = (
        f"missing {missing[:3]}"
        if missing
        else f"unexpected {extra[:3]}"
        if extra
        else f"{shaped[0]} is {have[shaped[0]]} but rebuilds as {want[shaped[0]]}"
    )
    raise PrunewiseError(
        f"cannot save this model: its description would not load back ({detail}); a module "
        "keeps state its constructor arguments do not describe"
    )


def checkpoint_payload(
    model: nn.Module, *, input_shape: tuple[int, ...], meta: dict | None = None, where: str = ""
) -> dict[str, Any]:
    """What `save_checkpoint` writes for `model`: its traced description, state dict, traced
    constants and metadata (JSON), checked to load back. Raises PrunewiseError naming `where`
    when it would not."""
    # layers outside torch.nn are stored as what they compute; a forward that branches on the
    # image size (MobileViT's patch unfolding) is traced at `input_shape`
    gm = trace(model, layers=False, input_shape=tuple(input_shape))
    propagate_shapes(gm, tuple(input_shape))  # the model runs at the shape recorded for it
    arch = describe(gm)
    state = {k: v.detach().cpu() for k, v in gm.state_dict().items()}
    constants = _graph_constants(gm, state)
    check_finite({**state, **constants}, f"cannot save {where or 'the model'}")
    _check_reloads(arch, state, constants)
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": json.dumps(arch),
        "state_dict": state,
        "constants": constants,
        "meta": _meta_json({**(meta or {}), "input_shape": list(input_shape)}, where),
        "frozen": [n for n, p in gm.named_parameters() if not p.requires_grad],
        "tied": tied_names(gm),
    }


def tie(model: nn.Module, names: Sequence[str]) -> None:
    """Make the parameters `names` of `model` one tensor, the first's. Raises ValueError for a
    name that is no parameter, or one of another shape."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"{missing[0]!r}, listed as tied, is no parameter")
    first = params[names[0]]
    for name in names[1:]:
        if params[name].shape != first.shape:
            raise ValueError(f"{name!r} and {names[0]!r}, listed as tied, differ in shape")
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._parameters[attr] = first


def _names(value: object) -> bool:
    """Whether `value` is a list of two or more strings."""
    return isinstance(value, list) and len(value) > 1 and all(isinstance(n, str) for n in value)


def _meta_json(meta: dict[str, Any], where: str) -> str:
    """`meta` as JSON (NumPy scalars and one-element tensors as their numbers). Raises
    PrunewiseError naming what is not JSON."""

    def number(value: object) -> object:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.detach().item()
        if isinstance(value, np.generic | np.ndarray) and value.size == 1:
            return value.item()
        raise TypeError(f"it holds a {type(value).__name__}")

    try:
        return json.dumps(meta, default=number, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PrunewiseError(
            f"cannot save {where or 'the model'}: its meta is not JSON ({exc}); keep to finite "
            "numbers, strings, lists and dicts with string keys"
        ) from exc


def save_torch(path: str | Path, payload: Any) -> Path:
    """torch.save `payload` to `path` atomically."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def save_checkpoint(
    path: str | Path, model: nn.Module, *, input_shape: tuple[int, ...], meta: dict | None = None
) -> Path:
    """Save architecture description + state dict + metadata; loads with weights_only=True.

    Parameters with requires_grad=False (a frozen backbone) load back frozen, and one held
    under several names (tied weights) loads back as one. The model is run (shapes only) at
    `input_shape` (C, H, W), and the description is checked as `load_checkpoint` will check it
    (allowed operations only, every tensor accounted for, finite values), so a file this
    writes always loads back to the same module with the same dtypes. Raises PrunewiseError
    when it would not.
    """
    payload = checkpoint_payload(model, input_shape=input_shape, meta=meta, where=str(path))
    return save_torch(path, payload)


def _first_sentence(exc: BaseException) -> str:
    """The first sentence of an exception's first line, without terminal escapes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if not text:
        return type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:
        return lines[1].rstrip(".")  # torch's heading names no tensor; the next line does
    return lines[0].split(". ")[0].rstrip(".")


def foreign_kind(path: Path) -> str | None:
    """What a file torch.load(weights_only=True) refused is, when it is a known kind that is
    not a state dict (a TorchScript archive, an ONNX model, torch's legacy format), with what
    to do instead; None otherwise. Reads headers only; runs nothing."""
    with path.open("rb") as f:
        head = f.read(64)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return (
                "a TorchScript archive (torch.jit.save), which prunewise does not run; save "
                "the model's state_dict() with torch.save and pass it with --model (--weights)"
            )
        return None
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"pytorch" in head):
        return (
            "an ONNX model; prunewise prunes PyTorch models: pass the PyTorch weights (ONNX "
            "files are what `prunewise bench-latency` times)"
        )
    if head[:2] == b"\x80\x02":  # a pickle, as torch.save wrote before its zip format
        return (
            "in torch's legacy (pre-1.6) format with Python objects weights-only loading "
            "refuses; load it in Python where you trust it and save its state_dict() with "
            "torch.save"
        )
    return None


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """torch.load(weights_only=True) with its failures worded for users."""
    not_ours = f"{path} is not a prunewise checkpoint"
    fix = "save models with prunewise.io.save_checkpoint or `prunewise train`"
    if path.stat().st_size == 0:
        raise PrunewiseError(f"{not_ours}: the file is empty; {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch_load(path, map_location)
    except PrunewiseError:
        raise
    except Exception as exc:
        if (kind := foreign_kind(path)) is not None:
            raise PrunewiseError(f"{not_ours}: it is {kind}") from exc
        if not zipfile.is_zipfile(path):
            raise PrunewiseError(
                f"{not_ours}: torch.load cannot read it; it is truncated, damaged or not a file "
                f"torch.save wrote; {fix}"
            ) from exc
        if isinstance(exc, pickle.UnpicklingError):
            raise PrunewiseError(
                f"{not_ours}: it holds pickled Python objects (a whole model saved with "
                f"torch.save(model)?), which prunewise never unpickles; {fix}"
            ) from exc
        raise PrunewiseError(
            f"{not_ours}: torch.load cannot read it ({_first_sentence(exc)}); it is damaged; {fix}"
        ) from exc


def _is_state_dict(payload: object) -> bool:
    return (
        isinstance(payload, dict)
        and bool(payload)
        and all(isinstance(v, torch.Tensor) for v in payload.values())
    )


SCOPED_FORMAT = "prunewise-scoped-checkpoint/1"
"""The `format` of a whole model whose part was pruned (prunewise.models.scoped)."""


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True) of `path`, with one-line errors for what is not there or
    cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise PrunewiseError(f"checkpoint {path} is a directory; give the .pt file inside it")
    if not path.is_file():
        raise PrunewiseError(
            f"checkpoint {path} does not exist; check the path (`prunewise train --out` "
            "and `prunewise prune --out` write checkpoints)"
        )
    return _torch_load(path, map_location)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a prunewise checkpoint without the original model code (weights_only=True); the
    model comes back in eval mode (call .train() to train it)."""
    path = Path(path)
    payload = read_torch_file(path, map_location)
    if _is_state_dict(payload):
        raise PrunewiseError(
            f"{path} is a plain state dict, not a prunewise checkpoint: it has weights but no "
            "architecture; give it with the model it fits (--model NAME --weights FILE on the "
            "command line), or rebuild the model in Python and save it with "
            "prunewise.io.save_checkpoint"
        )
    if isinstance(payload, dict) and payload.get("format") == SCOPED_FORMAT:
        raise PrunewiseError(
            f"{path} is a whole model with a pruned part (prunewise prune --scope): load it "
            "with prunewise.models.load_scoped_checkpoint, or load the pruned part alone "
            "from scope.pt beside it"
        )
    return checkpoint_from_payload(payload, str(path), map_location)


def checkpoint_from_payload(
    payload: Any, where: str, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """The model and metadata of a checkpoint payload read from `where` (checked: format,
    tensors only, finite, allowed operations). Raises PrunewiseError naming `where`."""
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise PrunewiseError(
            f"{where} is not a prunewise checkpoint (no {CHECKPOINT_FORMAT!r} marker); "
            "save models with prunewise.io.save_checkpoint or `prunewise train`"
        )
    try:
        arch = json.loads(payload["arch"])
        meta = json.loads(payload["meta"])
        state = payload["state_dict"]
        constants = payload.get("constants", {})
        shape = meta["input_shape"]
        if not (
            isinstance(shape, list)
            and shape
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise ValueError(f"input_shape {shape!r} is not a list of positive ints")
        if not all(isinstance(v, torch.Tensor) for v in (*state.values(), *constants.values())):
            raise ValueError("the state dict holds something other than tensors")
        frozen = payload.get("frozen", [])  # parameters saved with requires_grad=False
        if not (isinstance(frozen, list) and all(isinstance(n, str) for n in frozen)):
            raise ValueError("its list of frozen parameters is not a list of names")
        tied = payload.get("tied", [])  # names of one parameter (tied weights)
        if not (isinstance(tied, list) and all(_names(g) for g in tied)):
            raise ValueError("its list of tied parameters is not a list of lists of names")
    except Exception as exc:
        raise PrunewiseError(
            f"{where} is a damaged prunewise checkpoint ({_first_sentence(exc)}); save it again"
        ) from exc
    check_finite({**state, **constants}, where)
    try:
        model = rebuild(arch, {**state, **constants})
        model.load_state_dict(state, strict=True, assign=True)
        unset = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if unset:
            raise ValueError(f"no saved value for {', '.join(unset[:3])}")
        for names in tied:
            tie(model, names)
        params = dict(model.named_parameters())
        for name in frozen:
            if name not in params:
                raise ValueError(f"{name!r}, listed as frozen, is no parameter")
            params[name].requires_grad_(False)
        model = model.to(map_location).eval()
    except PrunewiseError as exc:
        raise PrunewiseError(f"{where} is refused: {exc}") from exc
    except Exception as exc:
        raise PrunewiseError(
            f"{where} is a damaged prunewise checkpoint ({_first_sentence(exc)}); save it again"
        ) from exc
    return Checkpoint(model, meta)
