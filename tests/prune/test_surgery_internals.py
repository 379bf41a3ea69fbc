"""Surgery internals: kept positions, tensor ownership, and the cheap shape verification."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torchvision

from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.prune import GroupDecision, PruningPlan, apply_plan
from prunewise.prune.surgery import kept_positions


def _random_plan(graph, seed: int) -> PruningPlan:
    rng = np.random.default_rng(seed)
    decisions = []
    for g in graph.groups:
        if g.prunable and g.size > 1 and rng.random() < 0.7:
            k = int(rng.integers(1, g.size))
            decisions.append(
                GroupDecision(g.id, g.size, tuple(rng.choice(g.size, k, replace=False)))
            )
    return PruningPlan(tuple(decisions), graph.input_shape)


def _kept_by_scan(graph, plan: PruningPlan) -> dict[str, dict[str, np.ndarray]]:
    """kept_positions written as a scan of every map against every decision."""
    masks = {}
    for d in plan.decisions:
        if d.removed:
            mask = np.zeros(d.channels, dtype=bool)
            mask[list(d.kept)] = True
            masks[[g.id for g in graph.groups].index(d.group)] = mask
    out: dict[str, dict[str, np.ndarray]] = {}
    for m in graph.maps:
        keep = np.ones(m.group.shape[0], dtype=bool)
        for gi, mask in masks.items():
            sel = m.group == gi
            keep[sel] = mask[m.index[sel]]
        if not keep.all():
            out.setdefault(m.module, {})[m.role] = np.nonzero(keep)[0]
    return out


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "vgg13_bn"])
def test_kept_positions_match_a_full_scan(name: str) -> None:
    graph = build_channel_graph(torchvision.models.get_model(name, weights=None), (3, 64, 64))
    plan = _random_plan(graph, seed=5)
    got, expected = kept_positions(graph, plan), _kept_by_scan(graph, plan)
    assert list(got) == list(expected)
    for module, roles in expected.items():
        assert list(got[module]) == list(roles)
        assert all(np.array_equal(got[module][r], roles[r]) for r in roles)


def test_pruned_model_shares_no_tensor_with_the_original(randomize_bn) -> None:
    model = randomize_bn(torchvision.models.get_model("resnet18", weights=None))
    graph = build_channel_graph(model, (3, 32, 32))
    pruned = apply_plan(graph, _random_plan(graph, seed=2))
    original = {t.data_ptr() for t in [*model.parameters(), *model.buffers()] if t.numel()}
    mine = [t for t in [*pruned.parameters(), *pruned.buffers()] if t.numel()]
    assert not any(t.data_ptr() in original for t in mine)
    assert all(p.requires_grad for p in pruned.parameters())


@pytest.mark.parametrize("role", ["in", "norm"])
def test_verification_catches_a_layer_left_at_its_old_width(role: str) -> None:
    graph = build_channel_graph(torchvision.models.get_model("resnet18", weights=None), (3, 32, 32))
    target = "layer1.0.conv2" if role == "in" else "layer1.0.bn1"
    broken = dataclasses.replace(
        graph, maps=tuple(m for m in graph.maps if not (m.module == target and m.role == role))
    )
    plan = PruningPlan((GroupDecision("layer1.0.conv1", 64, tuple(range(32))),), (3, 32, 32))
    failing = "layer1.0.conv2 (Conv2d)" if role == "in" else "layer1.0.bn1 (BatchNorm2d)"
    with pytest.raises(PrunewiseError, match=None) as err:
        apply_plan(broken, plan)
    message = str(err.value)  # names the layer, never blames the input
    assert f"surgery produced a model that does not run: layer {failing} fails" in message
    assert "input shape" not in message
    assert apply_plan(broken, plan, verify=False) is not None
