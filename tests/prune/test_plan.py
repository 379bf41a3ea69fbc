"""Pruning plans: saved, read back, and refused when their numbers are not whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prunewise.errors import PrunewiseError
from prunewise.prune.plan import PLAN_FORMAT, GroupDecision, PruningPlan


def _plan_data(**change: object) -> dict:
    group = {"group": "conv1", "channels": 4, "kept": [0, 2], "ratio": 0.5, "sparsity": None}
    group.update(change.pop("group", {}))  # type: ignore[arg-type]
    return {"format": PLAN_FORMAT, "input_shape": [1, 3, 8, 8], "groups": [group], **change}


def test_a_plan_round_trips_through_its_file(tmp_path) -> None:
    plan = PruningPlan.from_dict(_plan_data())
    back = PruningPlan.load(plan.save(tmp_path / "plan.json"))
    assert back == plan
    assert back.kept() == {"conv1": (0, 2)}


@pytest.mark.parametrize(
    "change",
    [
        {"group": {"kept": [0.5, 2]}},
        {"group": {"kept": [True, 2]}},
        {"group": {"kept": ["0", 2]}},
        {"group": {"channels": 4.7}},
        {"input_shape": [1, 3, 8.5, 8]},
        {"group": {"sparsity": "high"}},
        {"policy": ["alpha"]},
    ],
    ids=[
        "float-index",
        "bool-index",
        "text-index",
        "float-channels",
        "float-shape",
        "text-sparsity",
        "list-policy",
    ],
)
def test_a_plan_with_numbers_that_are_not_whole_is_refused(tmp_path, change) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_plan_data(**change)))
    with pytest.raises(PrunewiseError, match=r"pruning plan: (groups\[0\]|input_shape|policy)"):
        PruningPlan.load(path)


def test_decisions_take_numpy_and_torch_integers() -> None:
    kept = (np.int64(3), torch.tensor(1), 0)
    decision = GroupDecision("g", np.int32(4), kept)  # type: ignore[arg-type]
    assert decision.kept == (0, 1, 3) and type(decision.channels) is int
