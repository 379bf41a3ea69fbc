"""Paper A's hardware findings come out of the DPU model, and the graph walk finds the ops."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from prunewise.analysis import count_flops
from prunewise.hw.dpu.config import load_devices
from prunewise.hw.dpu.ops import dpu_ops
from prunewise.hw.dpu.summary import compare_dpu, dpu_summary
from prunewise.models import build_model
from prunewise.prune import apply_plan, uniform_plan
from prunewise.records.dpu import DpuProfile

SHAPE = (3, 224, 224)


@pytest.fixture(scope="module")
def vgg_pair() -> tuple[dict, dict, float]:
    torch.manual_seed(0)
    model = torchvision.models.vgg13_bn(weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 1.0)  # distinct |gamma| to rank
    pruned = apply_plan(model, uniform_plan(model, 0.55, input_shape=SHAPE))
    ratio = count_flops(model, SHAPE) / count_flops(pruned, SHAPE)
    board = load_devices().board("zcu102")
    return dpu_summary(model, SHAPE, board), dpu_summary(pruned, SHAPE, board), ratio


def test_fc_subgraphs_are_slowest_per_op_and_memory_bound(vgg_pair) -> None:
    before, _, _ = vgg_pair
    rows = before.subgraphs
    fc = [r for r in rows if r.kind == "fc"]
    conv = [r for r in rows if r.kind == "conv"]
    assert len(fc) == 3 and len(conv) == 10
    assert max(r.gops for r in fc) < min(r.gops for r in conv)
    assert all(r.bound == "memory" for r in fc)
    assert max(rows, key=lambda r: r.ms).name == "classifier.0"  # least work, most time
    assert sum(r.gop for r in fc) < 0.02 * before.gop


def test_pruning_80_percent_of_flops_gives_far_less_fps_and_lower_gops(vgg_pair) -> None:
    before, after, flops_ratio = vgg_pair
    assert 4.0 < flops_ratio < 5.5  # about 80 % of the FLOPs removed
    cmp = compare_dpu(before, after)
    assert cmp.gop_ratio == pytest.approx(flops_ratio, rel=0.01)
    for threads in (1, 2):
        assert 1.0 < cmp.fps_speedup[threads] < 0.7 * flops_ratio
    conv = [r for r in cmp.subgraphs if r.kind == "conv"]
    assert statistics.median(r.gops_change for r in conv) < 0.95  # per-subgraph GOP/s drops
    assert all(r.speedup < r.gop_ratio for r in conv)


def test_graph_walk_folds_bn_and_activation_and_finds_every_kind() -> None:
    model = build_model("resnet20", num_classes=10, in_channels=3)
    ops = dpu_ops(model, (3, 32, 32))
    kinds = [o.kind for o in ops]
    assert kinds.count("conv") == 19 + 2 and kinds.count("eltwise") == 9  # 2 downsample convs
    assert kinds.count("fc") == 1 and "cpu" not in kinds
    first = ops[0]
    assert first.name == "conv1" and first.fused == ("bn1", "relu")
    mobile = torchvision.models.mobilenet_v2(weights=None).eval()
    m_ops = dpu_ops(mobile, SHAPE)
    assert sum(o.kind == "dwconv" for o in m_ops) == 17
    assert not [o for o in m_ops if o.kind == "cpu"]  # ReLU6 is fused, dropout free


class _Odd(nn.Module):
    """A grouped convolution and a GELU go to the CPU; a spatial mean is a pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv(x))
        x = self.grouped(x).mean((2, 3))
        return torch.softmax(self.fc(x), dim=1)


def test_ops_the_dpu_cannot_run_fall_back_to_the_cpu_by_name() -> None:
    ops = dpu_ops(_Odd(), (4, 8, 8))
    assert [(o.name, o.kind) for o in ops] == [
        ("conv", "conv"),
        ("gelu", "cpu"),
        ("grouped", "cpu"),
        ("mean", "pool"),
        ("fc", "fc"),
    ]
    summary = dpu_summary(_Odd(), (4, 8, 8), load_devices().board("zcu104"), threads=(1,))
    assert summary.cpu_fallback == ("gelu", "grouped")
    assert summary.fps[1] > 0
    assert DpuProfile.from_dict(summary.to_dict()) == summary  # the record round-trips
    assert dpu_summary(_Odd(), (4, 8, 8), "ZCU104", threads=(1,)) == summary  # a board's name


def test_a_comparison_of_two_unrelated_models_is_refused() -> None:
    from prunewise.errors import PrunewiseError

    board = load_devices().board("zcu102")

    def profile(name: str, size: int) -> DpuProfile:
        return dpu_summary(build_model(name, num_classes=10, in_channels=1), (1, size, size), board)

    resnet = profile("resnet20", 28)
    with pytest.raises(PrunewiseError, match=r"share \d+ of \d+ subgraph names"):
        compare_dpu(profile("alexnet_small", 32), profile("resnet20", 32))
    with pytest.raises(PrunewiseError, match=r"inputs \(1, 28, 28\) and \(1, 32, 32\)"):
        compare_dpu(resnet, profile("resnet20", 32))
    assert compare_dpu(resnet, resnet).unmatched == ()


def test_blocks_in_their_training_form_are_warned_about() -> None:
    from prunewise.hw.dpu.summary import training_form_warning

    class RepBlock(nn.Module):  # as RepVGG / MobileOne: branches fused for deployment
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x)

        def reparameterize(self) -> None:
            pass

    warning = training_form_warning(nn.Sequential(RepBlock(), RepBlock()))
    assert warning is not None and warning.startswith("2 block(s) are in their training form")
    fused = RepBlock()
    fused.reparam_conv = nn.Conv2d(4, 4, 3, padding=1)  # what reparameterize() leaves
    del fused.a, fused.b
    assert training_form_warning(nn.Sequential(fused)) is None
    assert training_form_warning(nn.Sequential(nn.Conv2d(4, 4, 3))) is None
