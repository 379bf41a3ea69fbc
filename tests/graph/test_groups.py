"""Channel groups found by the tracer on real architectures and on hand-made graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph


def _tv(name: str) -> nn.Module:
    return torchvision.models.get_model(name, weights=None).eval()


def test_resnet18_groups_follow_the_paper() -> None:
    g = build_channel_graph(_tv("resnet18"), (3, 64, 64))
    inner = g.group("layer1.0.conv1")
    assert (inner.size, inner.norms, inner.consumers) == (
        64,
        ("layer1.0.bn1",),
        ("layer1.0.conv2",),
    )
    assert inner.prunable and not inner.tied
    stem = g.group("conv1")
    assert stem.tied and set(stem.producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} == set(stem.norms)
    down = g.group("layer2.0.conv2")
    assert "layer2.0.downsample.0" in down.producers and "layer2.0.downsample.1" in down.norms
    assert g.group("fc").blocked == "model output"
    assert g.group("x").blocked == "model input"


def test_mobilenet_v2_depthwise_joins_the_expansion_group() -> None:
    g = build_channel_graph(_tv("mobilenet_v2"), (3, 64, 64))
    grp = g.group("features.2.conv.0.0")
    assert grp.depthwise == ("features.2.conv.1.0",)
    assert grp.norms == ("features.2.conv.0.1", "features.2.conv.1.1")
    assert grp.consumers == ("features.2.conv.2",) and grp.prunable


def test_densenet_concat_gives_each_group_its_slice() -> None:
    g = build_channel_graph(_tv("densenet121"), (3, 64, 64))
    consumer = next(m for m in g.maps if m.module == "features.denseblock1.denselayer2.conv1")
    groups = np.unique(consumer.group)
    assert len(groups) == 2  # block input + the first layer's 32 new channels
    assert consumer.group.shape[0] == 64 + 32
    assert sorted(np.bincount(consumer.group)[groups].tolist()) == [32, 64]


def test_flatten_expands_channels_to_features() -> None:
    g = build_channel_graph(_tv("vgg13_bn"), (3, 64, 64))
    fc = next(m for m in g.maps if m.module == "classifier.0" and m.role == "in")
    assert fc.group.shape[0] == 512 * 49
    assert np.array_equal(fc.index[:49], np.zeros(49)) and fc.index[49] == 1
    assert g.groups[fc.group[0]].id == "features.31"


class _Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(torch.relu(self.bn(self.a(x))))
        y = y.view(y.shape[0], 2, 4, y.shape[2], y.shape[3]).transpose(1, 2).flatten(1, 2)
        return self.c(y)


def test_a_literal_channel_shuffle_prunes_whole_positions_of_every_group() -> None:
    """view(b, 2, 4, h, w) -> transpose -> flatten: the 4 positions of the groups are units."""
    g = build_channel_graph(_Shuffle(), (3, 8, 8))
    assert g.group("a").prunable
    b = g.group("b")
    assert b.prunable and b.size == 4 and b.consumers == ("c",)


class _Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.b(torch.relu(self.a(x))), dim=1)


def test_unknown_operation_blocks_the_channels_it_touches() -> None:
    g = build_channel_graph(_Unknown(), (3, 8, 8))
    assert g.group("a").prunable
    assert "no channel rule for cumsum" in (g.group("b").blocked or "")


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(torch.relu(self.bn(self.a(x))))
        return self.head(self.c(y))


def test_module_called_twice_is_pruned_identically_at_every_call() -> None:
    g = build_channel_graph(_Shared(), (3, 8, 8))
    grp = g.group("a")  # c reads a's channels, then its own: both are one group
    assert set(grp.producers) == {"a", "c"}
    assert grp.prunable and not grp.tied  # no residual addition: pruned by default


class _SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.a(x)))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.out(y * s)


def test_squeeze_excitation_product_ties_groups() -> None:
    g = build_channel_graph(_SE(), (3, 8, 8))
    grp = g.group("a")
    assert set(grp.producers) == {"a", "fc2"}
    assert not grp.tied  # a gate, not a residual addition: paper A's default prunes it
    assert set(grp.consumers) == {"fc1", "out"}


def test_input_that_does_not_fit_is_a_clear_error() -> None:
    with pytest.raises(PrunewiseError, match="does not fit"):
        build_channel_graph(_tv("resnet18"), (1, 64, 64))


class _HalfSplit(nn.Module):
    """Splits its channels at a size it computes (y.shape[1] // 2) and makes zeros like them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.c2 = nn.Conv2d(16, 8, 1)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(self.stem(x))
        half = y.shape[1] // 2
        z = self.c2(y[:, :half]) * torch.sigmoid(self.c3(y[:, half:]))
        return self.fc((z + z.new_zeros(z.shape[0], z.shape[1], 1, 1)).mean((2, 3)))


def _assert_exact_and_saved(graph, plan, pruned, tmp_path) -> None:
    """The pruned model computes as the zeroed copy, also after a save and a load."""
    from prunewise.io import load_checkpoint, save_checkpoint
    from prunewise.prune.surgery import zeroed_copy

    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = zeroed_copy(graph, plan).eval()(x)
        assert torch.allclose(pruned(x), want, atol=1e-5)
        path = save_checkpoint(tmp_path / "m.pt", pruned, input_shape=(3, 8, 8))
        assert torch.allclose(load_checkpoint(path).model.eval()(x), want, atol=1e-5)


def test_a_slice_at_a_computed_size_prunes_exactly_and_saves(tmp_path) -> None:
    from prunewise.prune import apply_plan, uniform_plan

    torch.manual_seed(0)
    model = _HalfSplit().eval()
    graph = build_channel_graph(model, (3, 8, 8))
    plan = uniform_plan(graph, 0.5, prune_tied=True, importance="l2")
    assert {d.group for d in plan.decisions if d.removed} == {"stem.0", "c2"}  # new_zeros follows
    pruned = apply_plan(graph, plan).eval()
    _assert_exact_and_saved(graph, plan, pruned, tmp_path)


@pytest.mark.parametrize(
    "make",
    [
        lambda z: torch.zeros((z.shape[0], z.shape[1], 1, 1)),
        lambda z: torch.ones(1, z.shape[1], 1, 1),
        lambda z: z.new_full((1, z.shape[1], 1, 1), 2.0),
    ],
    ids=["zeros-tuple", "ones-varargs", "new-full"],
)
def test_a_tensor_made_at_a_channel_count_follows_the_channels(make) -> None:
    from prunewise.prune import apply_plan, uniform_plan
    from prunewise.prune.surgery import zeroed_copy

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.bn(self.conv(x))
            return self.fc((z + make(z)).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    graph = build_channel_graph(model, (3, 8, 8))
    plan = uniform_plan(graph, 0.5, importance="l2")
    assert [d.removed for d in plan.decisions if d.group == "conv"] == [4]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(apply_plan(graph, plan).eval()(x), zeroed_copy(graph, plan)(x))


def test_concrete_slice_takes_a_computed_bound_from_the_traced_length() -> None:
    from torch import fx

    from prunewise.graph.functions import concrete_slice

    node = fx.Graph().placeholder("half")
    assert concrete_slice(slice(None, node), 32, 16) == slice(0, 16)
    assert concrete_slice(slice(node, None), 32, 16) == slice(16, 32)
    assert concrete_slice(slice(2, node), 32, 10) == slice(2, 12)
    assert concrete_slice(slice(node, -4), 32, 8) == slice(20, 28)
    assert concrete_slice(slice(node, node), 32, 8) is None  # both computed: unknown
    assert concrete_slice(slice(None, node, 2), 32, 8) is None
    assert concrete_slice(slice(None, node), 32, None) is None


class _WeightedFusion(nn.Module):
    """BiFPN's fast normalised fusion: two maps stacked, weighed and summed; then the same two
    unbound from a stack and multiplied."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.w = nn.Parameter(torch.tensor([1.0, 0.5]))
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        w = torch.relu(self.w)
        fused = (torch.stack([a, b], dim=-1) * (w / (w.sum() + 1e-4))).sum(-1)
        p, q = torch.stack([a, b]).unbind(0)
        return self.c(fused + p * q)


def test_stacked_maps_are_one_group_and_unbind_keeps_their_channels(tmp_path) -> None:
    from prunewise.prune import apply_plan, uniform_plan

    torch.manual_seed(0)
    model = _WeightedFusion().eval()
    graph = build_channel_graph(model, (3, 8, 8))
    assert [g.id for g in graph.groups if g.prunable] == ["a.0"]  # a and b: one group
    plan = uniform_plan(graph, 0.5, prune_tied=True)
    pruned = apply_plan(graph, plan).eval()
    convs = (pruned.get_submodule("a.0"), pruned.get_submodule("b.0"))
    assert [c.out_channels for c in convs] == [4, 4]
    _assert_exact_and_saved(graph, plan, pruned, tmp_path)

    class Apart(nn.Module):  # unbind along the channels: blocked
        def __init__(self) -> None:
            super().__init__()
            self.a, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(1, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first, second = self.a(x).unbind(1)
            return self.c((first * second)[:, None])

    blocked = build_channel_graph(Apart(), (3, 8, 8)).group("a")
    assert not blocked.prunable and "takes the channels apart" in (blocked.blocked or "")
