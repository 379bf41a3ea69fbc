"""Checkpoints of a whole model whose part was pruned in place (a detector's backbone).

A detector cannot be traced whole, so its architecture cannot be stored as prunewise stores a
model. A scoped checkpoint stores instead the model's *source* (a registered name,
`torchvision:NAME` or `timm:NAME`, with the arguments it was built with), the pruned part as a
regular checkpoint (traced description + weights), and the weights of everything else.
Loading builds the model from its library, puts the rebuilt part in place and loads the
weights, all read with `weights_only=True`. A model from your own file or module is refused
here: rebuilding it would run code that a checkpoint names, which prunewise never does (its
pruned part alone is still an ordinary checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunewise.errors import PrunewiseError, listing
from prunewise.io import (
    SCOPED_FORMAT,
    checkpoint_from_payload,
    checkpoint_payload,
    read_torch_file,
    save_torch,
)
from prunewise.models.sources import build_from_source, parse_source
from prunewise.prune.scope import get_scope, load_outside, outside_state, replace_scope

__all__ = ["LIBRARY_KINDS", "ScopedCheckpoint", "load_scoped_checkpoint", "save_scoped_checkpoint"]

LIBRARY_KINDS = ("registry", "torchvision", "timm")
"""Sources a scoped checkpoint may rebuild from (library code, never a user's file)."""


@dataclass(frozen=True)
class ScopedCheckpoint:
    """A loaded scoped checkpoint: the whole model, the scope's name and the metadata."""

    model: nn.Module
    scope: str
    meta: dict[str, Any]


def _library_source(name: str) -> None:
    kind = parse_source(name).kind
    if kind not in LIBRARY_KINDS:
        raise PrunewiseError(
            f"a whole model from {name} cannot be saved to rebuild without your code (a "
            "checkpoint that named your file would run it when loaded); save the pruned part "
            "alone (save_checkpoint, or scope.pt of `prunewise prune --scope`) and put it back "
            "with prunewise.prune.replace_scope"
        )


def save_scoped_checkpoint(
    path: str | Path,
    model: nn.Module,
    scope: str,
    *,
    source: dict[str, Any],
    input_shape: tuple[int, ...],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save `model`, whose sub-module `scope` was pruned, as its source + the part + weights.

    `source` holds what `build_from_source` was given: `name` (registered, torchvision: or
    timm:) and optionally `num_classes`, `in_channels`, `width`, `model_args`; `input_shape`
    (C, H, W) is the part's traced input. Raises PrunewiseError for a source outside a library,
    a part that cannot be saved, or a model the source does not rebuild.
    """
    _library_source(str(source.get("name")))
    part = get_scope(model, scope)
    rest = outside_state(model, scope)
    payload = {
        "format": SCOPED_FORMAT,
        "source": json.dumps(source),
        "scope": scope,
        "part": checkpoint_payload(part, input_shape=input_shape, where=f"{path} ({scope})"),
        "state_dict": rest,
        "meta": json.dumps({**(meta or {}), "input_shape": list(input_shape)}),
    }
    _assemble(payload, str(path))  # refuse a file that would not load back
    return save_torch(path, payload)


def _assemble(payload: dict[str, Any], where: str) -> ScopedCheckpoint:
    try:
        source = json.loads(payload["source"])
        meta = json.loads(payload["meta"])
        scope, rest = payload["scope"], payload["state_dict"]
        if not isinstance(source, dict) or not isinstance(source.get("name"), str):
            raise ValueError("no source name")
        if not isinstance(scope, str) or not all(
            isinstance(v, torch.Tensor) for v in rest.values()
        ):
            raise ValueError("the scope or the weights are not what a scoped checkpoint holds")
    except Exception as exc:
        raise PrunewiseError(
            f"{where} is a damaged scoped checkpoint ({exc}); save it again"
        ) from exc
    _library_source(source["name"])
    args = {k: source.get(k) for k in ("num_classes", "in_channels", "width", "model_args")}
    _no_fetching(args["model_args"], where)
    model = build_from_source(source["name"], **args)
    part = checkpoint_from_payload(payload["part"], f"{where} ({scope})").model
    whole = replace_scope(model, scope, part)
    wrong = load_outside(whole, scope, rest)
    if wrong:
        first = wrong[:3]
        raise PrunewiseError(
            f"{where}: the weights do not fit {source['name']} as built now ({first}); a "
            "different torchvision or timm version?"
        )
    return ScopedCheckpoint(whole.eval(), scope, meta)


_FETCHING = ("weights", "weights_backbone", "pretrained", "pretrained_backbone", "checkpoint_path")


def _no_fetching(model_args: object, where: str) -> None:
    """Refuse builder arguments from a file that make the builder download or read weights
    (torchvision's weights=, timm's pretrained= and pretrained_cfg*): the file's own weights
    are what it loads."""
    try:
        args = json.loads(model_args) if isinstance(model_args, str) else model_args
    except ValueError:
        args = None
    names = [str(k) for k in args if str(k).startswith(_FETCHING)] if isinstance(args, dict) else []
    if names:
        raise PrunewiseError(
            f"{where} asks its model's builder for {listing(names, 3)}, which downloads or reads "
            "other weights; refused (a checkpoint carries its own weights)"
        )


def load_scoped_checkpoint(path: str | Path) -> ScopedCheckpoint:
    """The whole model of a scoped checkpoint, rebuilt from its library source with the pruned
    part in place (everything read with weights_only=True). Raises PrunewiseError for another
    kind of file or a source outside torchvision, timm and prunewise's registry."""
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != SCOPED_FORMAT:
        raise PrunewiseError(
            f"{path} is not a scoped checkpoint (no {SCOPED_FORMAT!r} marker); load an ordinary "
            "checkpoint with prunewise.io.load_checkpoint"
        )
    return _assemble(payload, str(path))
