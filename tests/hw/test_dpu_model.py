"""DPU model arithmetic on hand-computed layers: tiling, traffic, time, bandwidth, fps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunewise.hw.dpu.config import Board, Calibration, load_devices
from prunewise.hw.dpu.model import (
    compute_cycles,
    core_bandwidth,
    fps,
    memory_bytes,
    op_time,
    profile,
)
from prunewise.hw.dpu.ops import DPUOp, dpu_ops
from prunewise.layers import CALL_KINDS, DPU_FUNCTIONS, DPU_METHODS

B4096 = load_devices().arch("B4096")
CAL = Calibration(
    efficiency=0.5, overhead_us=10.0, host_ms=1.0, bandwidth_efficiency=0.5, source="test"
)
# 100 MHz, 1 core, DDR 1 GB/s: one cycle = 10 ns; 0.5 GB/s usable
BOARD = Board("test", B4096, cores=1, clock_mhz=100.0, ddr_gbps=1.0, calibration=CAL)


def _conv(cin: int, cout: int, k: int, hout: int, wout: int, kind: str = "conv") -> DPUOp:
    macs = cout * hout * wout * cin * k * k
    weights = cin * cout * k * k + cout
    out = cout * hout * wout
    return DPUOp("c", kind, cin, cout, k, k, hout, wout, macs, weights, cin * 64, out)


def test_b4096_is_8_16_16_and_4096_ops_per_clock() -> None:
    assert (B4096.pp, B4096.icp, B4096.ocp) == (8, 16, 16)
    assert B4096.ops_per_clock == 4096
    for arch in load_devices().archs.values():
        assert arch.ops_per_clock == 2 * arch.pp * arch.icp * arch.ocp
        assert arch.ops_per_clock == int(arch.name[1:])


@pytest.mark.parametrize(
    ("cin", "cout", "wout", "cycles"),
    [
        (16, 32, 8, 1 * 2 * 1 * 8 * 9),  # exact multiples: no waste
        (17, 32, 8, 2 * 2 * 1 * 8 * 9),  # Cin = 17 on ICP 16 costs two input tiles
        (16, 33, 8, 1 * 3 * 1 * 8 * 9),  # Cout = 33 on OCP 16: three output tiles
        (16, 32, 9, 1 * 2 * 2 * 8 * 9),  # Wout = 9 on PP 8: two pixel tiles
        (3, 64, 224, 1 * 4 * 28 * 8 * 3),  # an RGB first layer: 3 x 3 columns in 9 lanes
        (12, 64, 8, 1 * 4 * 1 * 8 * 9),  # 12 x 3 = 36 > 32: no channel augmentation
    ],
)
def test_conv_cycles_tile_channels_and_pixels(cin: int, cout: int, wout: int, cycles: int) -> None:
    assert compute_cycles(_conv(cin, cout, 3, 8, wout), BOARD) == cycles


def test_channel_augmentation_packs_kernel_columns_only_when_on() -> None:
    stem = DPUOp("stem", "conv", 3, 64, 7, 7, 112, 112, 0, 0, 0, 0)  # ResNet's 7 x 7 stem
    assert B4096.augmented_channels == 32
    assert compute_cycles(stem, BOARD) == 4 * 14 * 112 * 2 * 7  # ceil(21 / 16) = 2 lanes' passes
    plain = replace(BOARD, arch=replace(B4096, channel_augmentation=False))
    assert plain.arch.augmented_channels == 0
    assert compute_cycles(stem, plain) == 4 * 14 * 112 * 49


def test_hard_sigmoid_and_hard_swish_run_on_the_alu_and_eltwise_engines() -> None:
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.act = nn.SiLU()  # Vitis AI: hard-swish = hard-sigmoid (ALU), x * it (eltwise)
            self.fc = nn.Conv2d(16, 16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(self.conv(x))
            s = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(y, 1)))  # hard-sigmoid (ALU)
            return F.relu(y * s)

    ops = dpu_ops(SE().eval(), (3, 8, 8))
    assert [o.kind for o in ops] == ["conv", "alu", "eltwise", "pool", "conv", "alu", "eltwise"]
    act = ops[1]
    assert (act.cout, act.hout, act.wout, act.in_bytes) == (16, 8, 8, 16 * 64)
    assert compute_cycles(act, BOARD) == 1 * 2 * 8  # C / ICP, W over PP / 2, H
    assert ops[2].in_bytes == 2 * 16 * 64 and ops[-1].fused == ("relu",)


def test_fc_depthwise_pool_and_eltwise_cycles() -> None:
    fc = DPUOp("fc", "fc", 4096, 1000, 1, 1, 1, 1, 4096 * 1000, 4096 * 1000, 4096, 1000)
    assert compute_cycles(fc, BOARD) == 256 * 63  # one pixel of 8 lanes used
    dw = _conv(32, 32, 3, 8, 8, kind="dwconv")
    assert compute_cycles(dw, BOARD) == 2 * 2 * 8 * 9  # C/ICP, W over PP/2 = 4, H, K
    pool = DPUOp("p", "pool", 64, 64, 2, 2, 14, 14, 64 * 28 * 28, 0, 64 * 28 * 28, 64 * 14 * 14)
    assert compute_cycles(pool, BOARD) == 4 * 4 * 14 * 4
    add = DPUOp("a", "eltwise", 64, 64, 1, 1, 8, 8, 64 * 64, 0, 2 * 64 * 64, 64 * 64)
    assert compute_cycles(add, BOARD) == 2 * 4 * 2 * 8  # two inputs
    cpu = DPUOp("s", "cpu", 10, 10, 1, 1, 1, 1, 10, 0, 10, 10)
    assert compute_cycles(cpu, BOARD) == 0


def test_traffic_rereads_the_input_once_per_weight_tile_only_when_neither_fits() -> None:
    buffer = B4096.buffer_bytes
    small = _conv(16, 32, 3, 8, 8)
    assert memory_bytes(small, BOARD) == small.weight_bytes + small.in_bytes + small.out_bytes
    fc = DPUOp("fc", "fc", 25088, 4096, 1, 1, 1, 1, 0, 25088 * 4096, 25088, 4096)
    assert memory_bytes(fc, BOARD) == fc.weight_bytes + 25088 + 4096  # input fits on chip
    big_in = 3 * buffer
    big = DPUOp("b", "conv", 512, 512, 3, 3, 56, 56, 0, 2 * buffer + 1, big_in, 100)
    assert memory_bytes(big, BOARD) == 2 * buffer + 1 + 3 * big_in + 100


def test_time_is_the_larger_of_compute_and_memory_plus_overhead() -> None:
    op = _conv(16, 32, 3, 8, 8)  # 144 cycles -> 144 * 10 ns / 0.5 = 2.88 us
    t = op_time(op, BOARD)
    nbytes = memory_bytes(op, BOARD)  # at 0.5 GB/s
    assert t.compute_ms == pytest.approx(144 * 10e-9 / 0.5 * 1e3)
    assert t.memory_ms == pytest.approx(nbytes / 0.5e9 * 1e3)
    assert t.ms == pytest.approx(max(t.compute_ms, t.memory_ms) + 0.01)
    assert t.bound == "memory"
    assert t.gops == pytest.approx(op.gop / (t.ms / 1e3))
    assert t.gbps == pytest.approx(nbytes / 1e9 / (t.ms / 1e3))


def test_cores_share_the_ddr_but_never_exceed_their_port() -> None:
    board = Board("b", B4096, cores=3, clock_mhz=300.0, ddr_gbps=17.07, calibration=CAL)
    port = 32 * 300e6
    assert core_bandwidth(board, 1) == pytest.approx(min(port, 17.07e9 * 0.5))
    assert core_bandwidth(board, 3) == pytest.approx(17.07e9 * 0.5 / 3)
    fast = Board("f", B4096, cores=1, clock_mhz=100.0, ddr_gbps=100.0, calibration=CAL)
    assert core_bandwidth(fast, 1) == pytest.approx(32 * 100e6)


def test_fps_serial_up_to_the_cores_then_overlapped() -> None:
    board = Board("b", B4096, cores=2, clock_mhz=100.0, ddr_gbps=100.0, calibration=CAL)
    ops = [_conv(64, 64, 3, 56, 56)]
    elements = 3 * 224 * 224  # host time = host_ms exactly
    one = profile(ops, board, elements, active=1)
    assert one.host_ms == pytest.approx(1.0)
    assert fps(ops, board, elements, 1) == pytest.approx(1e3 / (one.dpu_ms + 1.0))
    two = profile(ops, board, elements, active=2)
    assert fps(ops, board, elements, 2) == pytest.approx(2e3 / (two.dpu_ms + 1.0))
    many = fps(ops, board, elements, 8)
    assert many == pytest.approx(min(8e3 / (two.dpu_ms + 1.0), 2e3 / two.dpu_ms, 4e3 / 1.0))
    assert fps(ops, board, 3 * 112 * 112, 1) > fps(ops, board, elements, 1)  # host time scales


def test_cpu_ops_cost_host_time_and_transfers() -> None:
    op = DPUOp("sig", "cpu", 10, 10, 1, 1, 10, 10, 1000, 0, 1000, 1000)
    t = op_time(op, BOARD)
    assert t.bound == "cpu"
    assert t.compute_ms == pytest.approx(1000 * 5.0e-6 * CAL.cpu_ns_per_element / 5.0)
    assert t.ms == pytest.approx(t.compute_ms + 2000 / 0.5e9 * 1e3 + 0.01)


class _SameConv(nn.Conv2d):
    """A conv whose forward pads itself (timm's Conv2dSame): traced as F.pad and F.conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0, 1, self.groups
        )


class _BatchNormAct(nn.BatchNorm2d):
    """Batch norm and ReLU in one forward (timm's BatchNormAct2d): traced as F.batch_norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return F.relu(y)


class _Head(nn.Linear):
    """A classifier calling F.linear itself, after (x - 0.5) / 2 on the features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.flatten((x - 0.5) / 2, 1), self.weight, self.bias)


def _net(conv: type[nn.Conv2d], norm: type[nn.BatchNorm2d], head: type[nn.Linear]) -> nn.Module:
    relu = nn.Identity if norm is _BatchNormAct else nn.ReLU
    return nn.Sequential(
        conv(3, 16, 3, padding=0 if conv is _SameConv else 1), norm(16), relu(),
        conv(16, 16, 3, padding=0 if conv is _SameConv else 1, groups=16), norm(16), relu(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), head(16, 10),
    ).eval()  # fmt: skip


def test_layers_the_tracer_inlines_time_as_the_modules_they_stand_for() -> None:
    """F.conv2d, F.batch_norm, F.linear and F.pad (a subclass's own forward) are the same DPU
    ops as the modules: BN and ReLU folded, the padding the conv's, no host fallback."""
    want = dpu_ops(_net(nn.Conv2d, nn.BatchNorm2d, nn.Linear), (3, 8, 8))
    got = dpu_ops(_net(_SameConv, _BatchNormAct, _Head), (3, 8, 8))
    assert [o.kind for o in want] == ["conv", "dwconv", "pool", "fc"]
    fields = ("kind", "cin", "cout", "kh", "kw", "hout", "wout", "macs", "weight_bytes")
    assert [[getattr(o, f) for f in fields] for o in got] == [
        [getattr(o, f) for f in fields] for o in want
    ]
    assert [len(o.fused) for o in got[:2]] == [2, 2]  # batch_norm and relu, each


def test_grouped_convolutions_and_tensor_arithmetic_stay_on_the_host() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 8, 3, padding=1, groups=2)  # neither plain nor depthwise
            self.b = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.b(y) / (y + 1)  # a quotient of two tensors: not an eltwise engine op

    assert [o.kind for o in dpu_ops(Net().eval(), (4, 8, 8))] == ["cpu", "conv", "cpu"]


def test_timm_and_torchvision_efficientnet_b0_are_the_same_dpu_ops() -> None:
    timm = pytest.importorskip("timm")
    import torchvision

    with torch.device("meta"):
        ours = timm.create_model("efficientnet_b0").eval()
        theirs = torchvision.models.efficientnet_b0().eval()
    a, b = dpu_ops(ours, (3, 224, 224)), dpu_ops(theirs, (3, 224, 224))
    assert not [o.name for o in a if o.kind == "cpu"]
    assert [(o.kind, o.macs) for o in a] == [(o.kind, o.macs) for o in b]


def test_a_mean_over_the_image_is_pooling_and_over_channels_is_not() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            attention = y.mean(1, keepdim=True)  # CBAM's spatial attention: over channels
            return (y * attention).mean((2, 3)) + torch.mean(y, dim=-1).mean(-1)

    kinds = [o.kind for o in dpu_ops(Net().eval(), (3, 8, 8))]
    assert kinds == ["conv", "cpu", "eltwise", "pool", "pool", "pool", "eltwise"]


def test_every_function_and_method_kind_is_one_the_dpu_model_handles() -> None:
    assert set(DPU_FUNCTIONS.values()) | set(DPU_METHODS.values()) <= set(CALL_KINDS)


def test_a_pooling_is_timed_with_its_own_window_and_host_convolutions_count_2_macs() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.sppf = nn.MaxPool2d(5, 1, 2)  # stride 1: the sizes imply 1 x 1
            self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)

        def forward(self, x):
            y = F.max_pool2d(self.sppf(self.conv(x)), 3, 2, 1)
            return F.adaptive_avg_pool2d(self.grouped(y), 1)

    ops = {o.name: o for o in dpu_ops(Net().eval(), (3, 16, 16))}
    assert (ops["sppf"].kh, ops["sppf"].kw) == (5, 5)
    assert (ops["max_pool2d"].kh, ops["max_pool2d"].kw) == (3, 3)
    assert (ops["adaptive_avg_pool2d"].kh, ops["adaptive_avg_pool2d"].kw) == (8, 8)
    grouped = ops["grouped"]
    assert grouped.kind == "cpu" and grouped.gop == pytest.approx(2 * grouped.macs / 1e9)
