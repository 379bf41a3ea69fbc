"""A pruning plan: which channels of which groups stay. A plain, saved artifact."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunewise.errors import PrunewiseError
from prunewise.io import atomic_write_json, read_json
from prunewise.records.schema import PLAN, require_shape

__all__ = ["PLAN_FORMAT", "GroupDecision", "PruningPlan"]

PLAN_FORMAT = "prunewise-plan/1"


def _index(value: object, what: str) -> int:
    """`value` as an int when it is a whole number (an int, a NumPy or 0-d torch integer);
    PrunewiseError for a float, a bool or anything else (int() would round 2.7 to 2)."""
    if isinstance(value, bool):
        raise PrunewiseError(f"{what} must be a whole number, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise PrunewiseError(f"{what} must be a whole number, got {value!r}") from None


@dataclass(frozen=True)
class GroupDecision:
    """What the policy decided for one channel group, and why."""

    group: str
    channels: int
    kept: tuple[int, ...]
    ratio: float = 0.0
    sparsity: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        kept = tuple(
            sorted(_index(i, f"group {self.group}: a kept channel index") for i in self.kept)
        )
        object.__setattr__(self, "kept", kept)
        object.__setattr__(self, "channels", _index(self.channels, f"group {self.group}: channels"))
        if not kept:
            raise PrunewiseError(f"group {self.group}: a plan must keep at least one channel")
        if len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= self.channels:
            raise PrunewiseError(
                f"group {self.group}: kept indices must be distinct and within "
                f"[0, {self.channels}), got {kept[:5]}..."
            )

    @property
    def removed(self) -> int:
        """Number of channels removed."""
        return self.channels - len(self.kept)


@dataclass(frozen=True)
class PruningPlan:
    """Kept channel indices per group, plus the input shape and policy that produced them."""

    decisions: tuple[GroupDecision, ...]
    input_shape: tuple[int, ...]
    policy: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [d.group for d in self.decisions]
        if len(set(ids)) != len(ids):
            raise PrunewiseError("a pruning plan names the same group twice")

    def kept(self) -> dict[str, tuple[int, ...]]:
        """Group id -> kept channel indices, for groups that lose channels."""
        return {d.group: d.kept for d in self.decisions if d.removed}

    def check_fits(self, groups: Mapping[str, int], input_shape: tuple[int, ...]) -> None:
        """Raise if the plan was made for another model: other input, unknown or resized groups.

        `groups` maps the target model's channel group ids to their channel counts.
        """
        again = "make a new plan for this model (prune without --plan)"
        if tuple(self.input_shape) != tuple(input_shape):
            raise PrunewiseError(
                f"the plan was made for input {tuple(self.input_shape)}, the model takes "
                f"{tuple(input_shape)}; {again}"
            )
        unknown = [d.group for d in self.decisions if d.group not in groups]
        if unknown:
            raise PrunewiseError(
                f"the plan names channel groups this model does not have ({', '.join(unknown[:3])}"
                f"{', ...' if len(unknown) > 3 else ''}): it was made for another model; {again}"
            )
        for d in self.decisions:
            if groups[d.group] != d.channels:
                raise PrunewiseError(
                    f"the plan's group {d.group} has {d.channels} channels, this model's has "
                    f"{groups[d.group]}: it was made for another model; {again}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-compatible)."""
        return {
            "format": PLAN_FORMAT,
            "input_shape": list(self.input_shape),
            "policy": dict(self.policy),
            "groups": [
                {
                    "group": d.group,
                    "channels": d.channels,
                    "kept": list(d.kept),
                    "ratio": d.ratio,
                    "sparsity": d.sparsity,
                    "reason": d.reason,
                }
                for d in self.decisions
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """Inverse of `to_dict`, validating the content."""
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise PrunewiseError(f"not a prunewise pruning plan (expected format {PLAN_FORMAT})")
        require_shape(data, PLAN, "pruning plan")
        decisions = tuple(
            GroupDecision(
                group=g["group"],
                channels=g["channels"],
                kept=tuple(g["kept"]),
                ratio=float(g.get("ratio", 0.0)),
                sparsity=g.get("sparsity"),
                reason=g.get("reason", ""),
            )
            for g in data["groups"]
        )
        return cls(decisions, tuple(data["input_shape"]), data.get("policy", {}))

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        """Read a plan written by `save`."""
        if not Path(path).is_file():
            raise PrunewiseError(
                f"plan {path} does not exist; `prunewise prune --out DIR` writes DIR/plan.json"
            )
        return cls.from_dict(read_json(path))
