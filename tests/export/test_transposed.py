"""Transposed convolutions (segmentation decoders) in INT8 and in the DPU model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prunewise.export import (
    export_float,
    export_int8,
    int8_weight_layers,
    ort_logits,
    ort_session,
    parity_summary,
)
from prunewise.hw.dpu.ops import dpu_ops
from prunewise.quant import Int8Config, quantize
from prunewise.quant.fold import fold_batchnorm, unfolded_batchnorms


class Decoder(nn.Module):
    """Encoder step down, a transposed convolution up (BN, ReLU), concat, per-pixel head."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(8, 8, 4, 2, 1, groups=groups), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.head = nn.Conv2d(11, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([x, self.up(self.down(x))], 1))


@pytest.mark.parametrize("power_of_two", [False, True])
def test_a_transposed_convolution_is_int8_and_matches_in_onnx_runtime(
    power_of_two, randomize_bn, tmp_path
) -> None:
    model = randomize_bn(Decoder())
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert unfolded_batchnorms(fold_batchnorm(model, (3, 16, 16))) == []  # its BN folds
    # 7-bit weights: exact on every x86 CPU (docs/deploy.md)
    cfg = Int8Config(calibration_images=32, power_of_two=power_of_two, weight_bits=7)
    q = quantize(model, x[:32], cfg)
    assert set(q.spec.weights) == {"down.0", "up.0", "head"}
    assert len(q.spec.weights["up.0"]) == 8  # one scale per output channel (weight axis 1)
    fpath = export_float(model, tmp_path / "m.onnx", (3, 16, 16))
    ipath = export_int8(q, tmp_path / "m.int8.onnx")
    assert int8_weight_layers(onnx.load(ipath)) == 3
    with torch.no_grad():
        tf, tq = model(x).numpy(), q.model(x).numpy()
    of, oq = ort_logits(ort_session(fpath), x), ort_logits(ort_session(ipath), x)
    parity = parity_summary(tf, of, tq, oq)
    assert parity.int8_top1_agreement >= 0.99, parity
    # ORT computes the fake-quant model, but for an activation code that float rounding in its
    # float ConvTranspose (no integer kernel) puts on the other side of a rounding boundary
    off = np.abs(oq - tq) > 1e-4 * np.abs(tq).max()
    assert off.mean() < 0.01 and np.linalg.norm(oq - tq) / np.linalg.norm(tq) < 1e-3
    assert np.linalg.norm(tq - tf) / np.linalg.norm(tf) < 0.1


def test_a_grouped_transposed_convolution_keeps_float_weights(randomize_bn) -> None:
    model = randomize_bn(Decoder(groups=2))
    q = quantize(model, torch.randn(16, 3, 16, 16), Int8Config(calibration_images=16))
    assert set(q.spec.weights) == {"down.0", "head"}
    assert "up.1" in unfolded_batchnorms(fold_batchnorm(model, (3, 16, 16)))


def test_the_dpu_runs_a_transposed_convolution_at_its_own_macs() -> None:
    ops = {op.name: op for op in dpu_ops(Decoder().eval(), (3, 32, 32))}
    up = ops["up.0"]
    assert up.kind == "conv" and (up.kh, up.kw, up.hout, up.wout) == (2, 2, 32, 32)
    assert up.macs == 8 * 8 * 4 * 4 * 16 * 16  # Cin x Cout x Kh x Kw per input pixel
    assert up.fused == ("up.1", "up.2")  # BN and ReLU fold into it
