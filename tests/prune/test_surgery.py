"""Surgery is exact: the smaller model equals the original with removed channels zeroed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from prunewise.analysis import count_params
from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.models import build_model
from prunewise.prune import (
    GroupDecision,
    PruningPlan,
    RefinedConfig,
    apply_plan,
    refined_plan,
    uniform_plan,
)
from prunewise.prune.surgery import zeroed_copy

TORCHVISION = ["vgg13_bn", "resnet18", "resnet50", "resnet101", "mobilenet_v2"]


def _random_plan(graph, seed: int) -> PruningPlan:
    rng = np.random.default_rng(seed)
    decisions = []
    for g in graph.groups:
        if g.prunable and g.size > 1:
            k = int(rng.integers(1, g.size))
            decisions.append(
                GroupDecision(g.id, g.size, tuple(rng.choice(g.size, k, replace=False)))
            )
    return PruningPlan(tuple(decisions), graph.input_shape)


def _check_exact(model: nn.Module, shape: tuple[int, ...], plan_kind: str) -> None:
    graph = build_channel_graph(model, shape)
    if plan_kind == "random":
        plan = _random_plan(graph, seed=1)
    else:
        images = torch.rand(8, *shape, dtype=torch.float64) * 2 - 0.5
        plan = refined_plan(graph, images, RefinedConfig(prune_tied=True))
    assert any(d.removed for d in plan.decisions)
    pruned = apply_plan(graph, plan)
    reference = zeroed_copy(graph, plan)
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        expected, got = reference(x), pruned(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    assert count_params(pruned) < count_params(model)


@pytest.mark.parametrize("plan_kind", ["random", "eq4"])
@pytest.mark.parametrize("name", TORCHVISION)
def test_surgery_exact_on_torchvision(name: str, plan_kind: str, randomize_bn) -> None:
    model = randomize_bn(torchvision.models.get_model(name, weights=None)).double()
    _check_exact(model, (3, 64, 64), plan_kind)


def _prunewise_models() -> list[str]:
    from prunewise.models import list_models

    return [m.name for m in list_models() if m.source == "prunewise"]


@pytest.mark.parametrize("plan_kind", ["random", "eq4"])
@pytest.mark.parametrize("name", _prunewise_models())
def test_surgery_exact_on_prunewise_models(name: str, plan_kind: str, randomize_bn) -> None:
    from prunewise.models import build_model

    model = randomize_bn(build_model(name, num_classes=10, in_channels=1)).double()
    _check_exact(model, (1, 32, 32), plan_kind)


def test_float32_surgery_within_tolerance(randomize_bn) -> None:
    model = randomize_bn(torchvision.models.get_model("resnet18", weights=None))
    graph = build_channel_graph(model, (3, 64, 64))
    plan = _random_plan(graph, seed=3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (apply_plan(graph, plan)(x) - zeroed_copy(graph, plan)(x)).abs().max().item()
    assert diff <= 1e-5


def test_original_model_is_untouched(randomize_bn) -> None:
    model = randomize_bn(torchvision.models.get_model("resnet18", weights=None))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = build_channel_graph(model, (3, 32, 32))
    apply_plan(graph, _random_plan(graph, seed=0))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sliced_modules_report_their_new_sizes(randomize_bn) -> None:
    model = randomize_bn(torchvision.models.get_model("mobilenet_v2", weights=None))
    graph = build_channel_graph(model, (3, 32, 32))
    gid = "features.2.conv.0.0"
    plan = PruningPlan((GroupDecision(gid, 96, tuple(range(40))),), graph.input_shape)
    pruned = apply_plan(graph, plan)
    assert pruned.get_submodule("features.2.conv.0.0").out_channels == 40
    assert pruned.get_submodule("features.2.conv.0.1").num_features == 40
    dw = pruned.get_submodule("features.2.conv.1.0")
    assert (dw.in_channels, dw.out_channels, dw.groups) == (40, 40, 40)
    assert pruned.get_submodule("features.2.conv.2").in_channels == 40
    assert pruned.get_submodule("features.2.conv.1.1").running_mean.shape == (40,)


def test_plan_for_another_model_is_refused() -> None:
    model = torchvision.models.get_model("resnet18", weights=None).eval()
    graph = build_channel_graph(model, (3, 32, 32))
    wrong_size = PruningPlan((GroupDecision("layer1.0.conv1", 32, (0, 1)),), (3, 32, 32))
    with pytest.raises(PrunewiseError, match="disagree"):
        apply_plan(graph, wrong_size)
    missing = PruningPlan((GroupDecision("nope", 4, (0,)),), (3, 32, 32))
    with pytest.raises(PrunewiseError, match="no channel group"):
        apply_plan(graph, missing)
    blocked = PruningPlan((GroupDecision("fc", 1000, (0,)),), (3, 32, 32))
    with pytest.raises(PrunewiseError, match="cannot be pruned"):
        apply_plan(graph, blocked)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
@pytest.mark.parametrize("kind", ["prune masks", "weight_norm", "parametrized weight_norm"])
def test_reparametrized_weights_are_made_permanent_for_surgery(kind: str, randomize_bn) -> None:
    """A model carrying torch.nn.utils.prune masks (or weight-norm hooks / parametrizations) is
    pruned as the plain model it computes; the user's model keeps its masks."""
    model = randomize_bn(build_model("vgg11_bn_small", num_classes=10, in_channels=1, width=0.25))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs[:3]:
        if kind == "prune masks":
            torch.nn.utils.prune.l1_unstructured(conv, "weight", amount=0.5)
        elif kind == "weight_norm":
            torch.nn.utils.weight_norm(conv)
        else:
            torch.nn.utils.parametrizations.weight_norm(conv)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
    graph = build_channel_graph(model, (1, 32, 32))
    pruned = apply_plan(graph, uniform_plan(graph, 0.0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-5)
    smaller = apply_plan(graph, uniform_plan(graph, 0.5))
    assert sum(p.numel() for p in smaller.parameters()) < sum(
        p.numel() for p in pruned.parameters()
    )
    if kind == "prune masks":
        assert all(hasattr(c, "weight_mask") for c in convs[:3])  # the user's model is unchanged
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


class _Mixing(nn.Module):
    """A group whose channels a mean and a standard deviation over them both combine."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.a(x)))
        return self.b(y + y.mean(1, keepdim=True) * y.std(1, keepdim=True))


def test_pruned_groups_whose_channels_are_mixed_are_named_with_every_reason() -> None:
    from prunewise.prune import inexact_groups, inexact_warning

    graph = build_channel_graph(_Mixing().eval(), (3, 8, 8))
    plan = uniform_plan(graph, 0.5)
    found = inexact_groups(graph, plan)
    assert list(found) == ["a"]
    assert found["a"].startswith("mean (mean) reduces over the channels; std (std) reduces")
    warning = inexact_warning(graph, plan) or ""
    assert warning.startswith("1 pruned group(s) are not exact (a): ")
    assert inexact_warning(graph, uniform_plan(graph, 0.0)) is None


class _Tied(nn.Module):
    """Two convolutions of one weight (tied), each with its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c2.weight = self.c1.weight
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.a(x)))
        x = torch.relu(self.bn1(self.c1(x)))
        return self.fc(torch.relu(self.bn2(self.c2(x))).mean((2, 3)))


def test_tied_weights_stay_one_tensor_through_surgery_and_checkpoints(
    tmp_path, randomize_bn
) -> None:
    from prunewise.io import load_checkpoint, save_checkpoint

    model = randomize_bn(_Tied()).eval().double()
    graph = build_channel_graph(model, (1, 8, 8))
    plan = uniform_plan(graph, 0.5)
    assert [d.group for d in plan.decisions if d.removed] == ["a"]  # one group: one weight
    pruned = apply_plan(graph, plan).eval()
    assert pruned.c1.weight is pruned.c2.weight and pruned.c1.weight.shape == (4, 4, 3, 3)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(pruned(x), zeroed_copy(graph, plan).eval()(x), atol=1e-10)
    assert count_params(pruned) == count_params(pruned.c1) + sum(
        count_params(m) for m in (pruned.a, pruned.bn0, pruned.bn1, pruned.bn2, pruned.fc)
    )
    path = save_checkpoint(tmp_path / "t.pt", pruned.float(), input_shape=(1, 8, 8))
    loaded = load_checkpoint(path).model
    assert loaded.c1.weight is loaded.c2.weight
