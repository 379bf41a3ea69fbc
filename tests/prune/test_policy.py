"""The refined policy: eq. 4, channel counts, ranking by |gamma|, config validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.prune import (
    RefinedConfig,
    apply_plan,
    channels_to_keep,
    refined_plan,
    uniform_keep,
    uniform_plan,
)


def test_eq4_is_the_papers_rule() -> None:
    cfg = RefinedConfig(alpha=0.5, beta=0.5)
    assert cfg.ratio(0.49) == pytest.approx(0.49)
    assert cfg.ratio(0.51) == pytest.approx(0.255)
    assert cfg.ratio(0.5) == pytest.approx(0.5)
    assert RefinedConfig.scheme(2).ratio(0.8) == pytest.approx(0.8)


def test_continuous_policy_has_no_jump_at_alpha() -> None:
    cfg = RefinedConfig(alpha=0.5, beta=0.5, policy="continuous")
    assert cfg.ratio(0.5) == pytest.approx(0.5)
    assert cfg.ratio(0.5001) == pytest.approx(0.5, abs=1e-3)
    assert cfg.ratio(0.9) == pytest.approx(0.7)


def test_channels_to_keep() -> None:
    assert channels_to_keep(64, 0.3) == 64 - 19
    assert channels_to_keep(64, 0.3, reference_compat=True) == 64 - 20
    assert channels_to_keep(64, 0.0, reference_compat=True) == 64
    assert channels_to_keep(10, 0.95) == 2
    assert channels_to_keep(10, 0.95, reference_compat=True) == 10
    assert channels_to_keep(64, 0.3, round_to=16) == 48
    assert channels_to_keep(64, 0.9, round_to=16) == 16
    assert channels_to_keep(20, 0.1, round_to=16) == 20
    assert channels_to_keep(3, 0.5, min_channels=1) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"beta": -0.1},
        {"beta": 2},
        {"policy": "magic"},
        {"min_channels": 0},
        {"round_to": 0},
        {"min_sparsity": 1.0},
    ],
)
def test_bad_config_values_are_refused(kwargs: dict) -> None:
    with pytest.raises(PrunewiseError):
        RefinedConfig(**kwargs)


def test_scheme_presets() -> None:
    assert (RefinedConfig.scheme(1).alpha, RefinedConfig.scheme(1).beta) == (0.5, 0.5)
    assert (RefinedConfig.scheme(2).alpha, RefinedConfig.scheme(2).beta) == (1.0, 1.0)
    with pytest.raises(PrunewiseError):
        RefinedConfig.scheme(3)


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.bn(self.a(x))))


def test_lowest_gamma_channels_go_first() -> None:
    model = _Chain().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.9, -0.1, 0.5, 0.05, 0.7, -0.8, 0.3, 0.2]))
        model.bn.bias.fill_(-10.0)  # every channel is zero after ReLU: sparsity 1
    plan = refined_plan(model, torch.rand(4, 1, 6, 6), RefinedConfig.scheme(2))
    d = next(d for d in plan.decisions if d.group == "a")
    assert d.sparsity == pytest.approx(1.0)
    assert d.kept == (0, 5)  # ratio 1 -> keep min_channels=2, the two largest |gamma|


def test_model_without_batchnorm_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    with pytest.raises(PrunewiseError, match="no BatchNorm"):
        refined_plan(model, torch.rand(2, 1, 8, 8))


def test_tied_groups_stay_whole_by_default() -> None:
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(2, 3, 32, 32)
    plan = refined_plan(model, x)
    tied = {d.group: d for d in plan.decisions if "tied" in d.reason}
    assert "conv1" in tied and all(not d.removed for d in tied.values())
    joint = refined_plan(model, x, RefinedConfig(prune_tied=True))
    assert any(d.removed for d in joint.decisions if d.group in tied)


def test_uniform_keep_rounds_the_kept_count_down() -> None:
    assert uniform_keep(64, 0.4) == 38  # floor(38.4): 26 removed, as Torch-Pruning's count
    assert channels_to_keep(64, 0.4) == 39  # paper A: floor(25.6) = 25 removed
    assert uniform_keep(10, 0.4) == 6  # exact: 0.6 * 10 is 6 despite float error
    assert uniform_keep(8, 0.0) == 8 and uniform_keep(3, 0.9) == 1
    assert uniform_keep(3, 0.9, min_channels=2) == 2 and uniform_keep(1, 0.5, min_channels=4) == 1


def test_uniform_plan_ratio() -> None:
    plan = uniform_plan(_Chain().eval(), 0.5, input_shape=(1, 6, 6))
    assert len(next(d for d in plan.decisions if d.group == "a").kept) == 4
    with pytest.raises(PrunewiseError):
        uniform_plan(_Chain(), 1.0, input_shape=(1, 6, 6))


def test_a_fixed_ratio_prunes_every_prunable_group_whatever_its_sparsity() -> None:
    model = _Chain().eval()
    with torch.no_grad():
        model.bn.bias.fill_(10.0)  # no channel is ever zero: eq. 4 removes nothing
    x = torch.rand(4, 1, 6, 6)
    assert not any(d.removed for d in refined_plan(model, x).decisions)
    config = RefinedConfig(fixed_ratio=0.5, min_sparsity=0.5)
    assert config.ratio(None) == config.ratio(0.9) == 0.5
    d = next(d for d in refined_plan(model, x, config).decisions if d.group == "a")
    assert (len(d.kept), d.sparsity, d.reason) == (4, 0.0, "uniform: P=0.500 (--ratio)")
    rounded = RefinedConfig(fixed_ratio=0.5, min_sparsity=0.5, round_to=8, min_channels=1)
    d = next(d for d in refined_plan(model, x, rounded).decisions if d.group == "a")
    assert len(d.kept) == 8 and d.reason == (
        "uniform: P=0.500 (--ratio); keeps 8 of 8, not 4: rounded up to a multiple of 8 "
        "(--round-to)"
    )
    rounded = dataclasses.replace(rounded, round_to=16)
    d = next(d for d in refined_plan(model, x, rounded).decisions if d.group == "a")
    assert len(d.kept) == 8 and d.reason.endswith(
        "keeps 8 of 8, not 4: the next multiple of 16 is more than the group has (--round-to)"
    )
    with pytest.raises(PrunewiseError, match="sparsity"):
        RefinedConfig().ratio(None)
    for bad in (0.0, 1.0, -0.2, True):
        with pytest.raises(PrunewiseError, match="--ratio"):
            RefinedConfig(fixed_ratio=bad)


def test_scale_multiplies_eq4_ratios_and_keeps_the_gamma_ranking() -> None:
    from prunewise.analysis import analyze
    from prunewise.models import build_model
    from prunewise.prune import decide

    torch.manual_seed(0)
    model = build_model("vgg13_bn_small", num_classes=10, in_channels=1, width=0.25).eval()
    analysis = analyze(model, torch.rand(8, 1, 32, 32))
    cfg = RefinedConfig()
    base = {d.group: d for d in decide(analysis, cfg).decisions}
    half = decide(analysis, cfg, scale=0.5)
    assert half.policy["scale"] == 0.5
    for d in half.decisions:
        b = base[d.group]
        assert d.ratio == pytest.approx(min(1.0, 0.5 * b.ratio))
        assert len(d.kept) >= len(b.kept)
        assert set(b.kept) <= set(d.kept)  # the same |gamma| ranking, fewer channels out
    assert all(not d.removed for d in decide(analysis, cfg, scale=0.0).decisions)
    big = decide(analysis, cfg, scale=1e6)
    assert all(d.ratio <= 1.0 for d in big.decisions)
    with pytest.raises(PrunewiseError, match="scale"):
        decide(analysis, cfg, scale=-1.0)


class _Split(nn.Module):
    """A conv whose channels are split in two halves for two branches (ShuffleNet-V2's unit)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.bn(self.conv(x))).chunk(2, dim=1)
        return torch.cat([self.left(a), self.right(b)], dim=1)


def test_no_part_of_a_split_is_emptied() -> None:
    model = _Split().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([5.0, 6.0, 7.0, 8.0, 0.1, 0.4, 0.2, 0.3]))
    plan = uniform_plan(model, 0.5, input_shape=(3, 8, 8))  # the top 4 are all in one half
    decision = next(d for d in plan.decisions if d.group == "conv")
    assert decision.kept == (0, 1, 2, 3, 5)  # the right half keeps its best channel
    assert "split" in decision.reason
    pruned = apply_plan(model, plan)
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 8, 8, 8)  # the output is never pruned


def test_a_model_with_no_prunable_group_gets_a_plan_with_the_reasons() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten())  # out: the model's
    plan = refined_plan(model.eval(), torch.rand(2, 1, 6, 6))
    assert not any(d.removed for d in plan.decisions)
    assert {d.reason for d in plan.decisions} == {"fixed: model input", "fixed: model output"}


def test_a_model_or_ratio_of_another_type_is_one_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(PrunewiseError, match=r"the model must be a torch.nn.Module, got str"):
        build_channel_graph("resnet18", (1, 8, 8))
    graph = build_channel_graph(model, (1, 8, 8))
    for ratio in ("0.3", True, 1.0):
        with pytest.raises(PrunewiseError, match=r"ratio must be a number in \[0, 1\)"):
            uniform_plan(graph, ratio)
