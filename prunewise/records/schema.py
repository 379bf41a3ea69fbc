"""The shapes of the JSON records in a run folder (docs/run-folder.md), checked when read.

A record that does not have its shape (a key of the wrong type, a required key missing) is
damaged: the report says so and leaves it out, instead of failing on it somewhere later. A
schema is a Python type (`int`, `str`, `bool`, `dict`, `list`), `NUMBER` (a finite int or float,
not a bool), `Maybe(s)` (None or s), `[s]` (a list of s), `Map(s)` (an object whose values are
s) or `{"key": s, "key?": s}` (an object with those keys; '?' marks an optional one; other keys
are allowed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunewise.errors import PrunewiseError

__all__ = [
    "ANALYSIS",
    "CONFIG",
    "DEPLOY",
    "DPU",
    "FAILURE",
    "GROUP_EXPERIMENT",
    "NUMBER",
    "PLAN",
    "Map",
    "Maybe",
    "RecordError",
    "require_shape",
    "shape_problem",
]


@dataclass(frozen=True)
class Maybe:
    """None, or a value of `schema`."""

    schema: Any


@dataclass(frozen=True)
class Map:
    """An object whose values all have `schema` (any keys)."""

    schema: Any


NUMBER = "number"


def _type_name(schema: Any) -> str:
    if schema == NUMBER:
        return "a number"
    if isinstance(schema, Maybe):
        return f"{_type_name(schema.schema)} or null"
    if isinstance(schema, list):
        return "a list"
    if isinstance(schema, dict | Map) or schema is dict:
        return "an object"
    return {int: "an integer", str: "a string", bool: "true or false", list: "a list"}.get(
        schema, str(schema)
    )


def shape_problem(value: Any, schema: Any, where: str = "") -> str | None:
    """Where `value` departs from `schema` and how ('groups[3].channels: expected an integer,
    got "x"'), or None when it fits."""
    if isinstance(schema, Maybe):
        return None if value is None else shape_problem(value, schema.schema, where)
    bad = f"{where or 'the record'}: expected {_type_name(schema)}, got {value!r:.60}"
    if schema == NUMBER:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok and math.isfinite(value) else bad
    if schema is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else bad
    if isinstance(schema, type):
        return None if isinstance(value, schema) else bad
    if isinstance(schema, list):
        if not isinstance(value, list):
            return bad
        for i, item in enumerate(value):
            found = shape_problem(item, schema[0], f"{where}[{i}]")
            if found:
                return found
        return None
    if not isinstance(value, dict):
        return bad
    if isinstance(schema, Map):
        items = [(k, schema.schema) for k in value]
    else:
        items = []
        for key, sub in schema.items():
            name = key.rstrip("?")
            if name in value:
                items.append((name, sub))
            elif not key.endswith("?"):
                return f"{where + '.' if where else ''}{name}: missing"
    for key, sub in items:
        found = shape_problem(value[key], sub, f"{where + '.' if where else ''}{key}")
        if found:
            return found
    return None


class RecordError(PrunewiseError):
    """A record does not have its shape (a key missing or of the wrong type)."""


def require_shape(data: Any, schema: Any, what: str) -> None:
    """Raise RecordError naming `what` and the first place `data` departs from `schema`."""
    if not isinstance(data, Mapping):
        raise RecordError(f"{what}: not a JSON object")
    found = shape_problem(dict(data), schema)
    if found is not None:
        raise RecordError(f"{what}: {found}")


_N = Maybe(NUMBER)
PLAN = {
    "format": str,
    "input_shape": [int],
    "policy?": dict,
    "groups": [
        {
            "group": str,
            "channels": int,
            "kept": [int],
            "ratio?": NUMBER,
            "sparsity?": _N,
            "reason?": str,
        }
    ],
}
"""plan.json: the kept channels of each group (prunewise.prune.plan.PruningPlan)."""

FAILURE = {"error": str, "type?": str, "time_utc?": str}
"""failed.json: how the last attempt ended."""

CONFIG = {
    "model": {"name": str, "width?": _N, "baseline?": Maybe(str)},
    "data": {"name": str},
    "policy": {
        "alpha": NUMBER,
        "beta?": NUMBER,
        "policy?": str,
        "min_channels?": int,
        "round_to?": int,
        "min_sparsity?": NUMBER,
    },
    "train?": {"epochs?": int, "lr?": NUMBER, "seed?": int},
    "finetune": {"epochs?": int, "teacher?": str, "temperature?": NUMBER, "weight?": NUMBER},
    "deploy?": {"enabled?": bool},
    "tolerance": NUMBER,
    "max_iterations?": int,
    "batch_size?": int,
    "analysis_images?": int,
    "group_experiment?": int,
}
"""config.json, as far as the report reads it (`RunConfig.from_dict` checks all of it)."""

_LAYER = {
    "module": str,
    "channels": int,
    "sparsity_mean": _N,
    "sparsity_std": _N,
    "sparsity_cv": _N,
}
_GROUP = {
    "group": str,
    "channels": int,
    "prunable?": bool,
    "tied?": bool,
    "blocked?": Maybe(str),
    "sparsity_mean?": _N,
    "sparsity_std?": _N,
    "sparsity_cv?": _N,
    "gamma_min?": _N,
    "gamma_mean?": _N,
    "gamma_max?": _N,
    "gamma?": Maybe([NUMBER]),
    "ratio?": _N,
    "kept?": Maybe(int),
    "decision?": Maybe(str),
}
_PRUNABILITY = {
    "channels": int,
    "prunable_channels": int,
    "flops": int,
    "prunable_flops": int,
    "channel_share": NUMBER,
    "flops_share": NUMBER,
    "prune_tied?": bool,
    "importance?": str,
    "blockers": [{"reason": str, "channels": int}],
    "warning?": Maybe(str),
}
ANALYSIS = {
    "input_shape?": [int],
    "images?": int,
    "params?": int,
    "flops?": int,
    "layers?": [_LAYER],
    "groups?": [_GROUP],
    "policy?": Maybe(dict),
    "prunability?": Maybe(_PRUNABILITY),
}
"""analysis.json of a stage."""

GROUP_EXPERIMENT = {
    "G": int,
    "baseline_acc": NUMBER,
    "accuracy": [NUMBER],
    "images?": int,
    "split?": str,
    "pruned_groups?": [str],
}
"""group_experiment.json (paper A fig. 20)."""

_LATENCY = {"batch": int, "threads": int, "median_ms": NUMBER, "fps": NUMBER}
DEPLOY = {
    "metric?": str,
    "bytes": {"float": int, "int8": int},
    "accuracy": Map(NUMBER),
    "parity": {
        "float_max_rel_error": NUMBER,
        "int8_top1_agreement": NUMBER,
        "float_ok": bool,
        "int8_ok": bool,
        "int8_float_rel_error?": NUMBER,
        "int8_float_ok?": bool,
        "int8_reference?": str,
        "ok?": bool,
    },
    "latency?": Map([_LATENCY]),
    "config?": {"int8?": dict},
    "images?": int,
    "input_shape?": [int],
}
"""deploy/<stage>/deploy.json."""

_SUBGRAPH = {
    "name": str,
    "kind": str,
    "gop": NUMBER,
    "ms": NUMBER,
    "gops": NUMBER,
    "mb": NUMBER,
    "gbps": NUMBER,
    "bound": str,
}
DPU = {
    "board": str,
    "calibration": dict,
    "subgraphs": [_SUBGRAPH],
    "total": {"gop": NUMBER, "dpu_ms": NUMBER},
    "cpu_fallback": [str],
    "fps": Map(NUMBER),
}
"""dpu/<stage>.json."""
