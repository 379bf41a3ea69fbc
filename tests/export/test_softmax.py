"""A softmax between int8 tensors: its output is quantized at the fixed scale that ONNX
Runtime's QLinearSoftmax computes exactly, so the ORT INT8 model equals the fake-quantized one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunewise.export import export_int8, optimized_ops, ort_logits, ort_session
from prunewise.quant import Int8Config, quantize
from prunewise.quant.qparams import QParams, probability_qparams

SPELLINGS = {
    "module": nn.Softmax(dim=-1),
    "function": lambda s: F.softmax(s, dim=-1),
    "method": lambda s: s.softmax(-1),
}


class _Attention(nn.Module):
    """Tokens from a conv, one attention head, a classifier."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.qk, self.v = nn.Linear(16, 32), nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)
        self.softmax = SPELLINGS[spelling]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.stem(x)).flatten(2).transpose(1, 2)  # (N, 64 tokens, 16)
        q, k = self.qk(t).chunk(2, dim=-1)
        attention = self.softmax(q @ k.transpose(1, 2) * 0.5)
        return self.head((attention @ self.v(t)).mean(1))


def test_probability_qparams() -> None:
    assert probability_qparams("uint8") == QParams(1 / 256, 0, "uint8")
    assert probability_qparams("int8") == QParams(1 / 256, -128, "int8")
    assert probability_qparams("uint8", power_of_two=True) == QParams(2**-7, 0, "int8")
    with pytest.raises(ValueError, match="dtype"):
        probability_qparams("int16")


@pytest.mark.parametrize(
    ("spelling", "power_of_two"), [("module", False), ("function", True), ("method", False)]
)
def test_ort_int8_equals_the_fake_quantized_model_through_a_softmax(
    spelling: str, power_of_two: bool, tmp_path
) -> None:
    torch.manual_seed(0)
    model = _Attention(spelling).eval()
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    config = Int8Config(calibration_images=32, power_of_two=power_of_two, weight_bits=7)
    q = quantize(model, x[:32], config)
    softmax = next(n for n in q.spec.activations if "softmax" in n)
    assert q.spec.activations[softmax] == probability_qparams(
        config.activation_dtype, power_of_two=power_of_two
    )
    path = export_int8(q, tmp_path / "m.int8.onnx")
    assert "QLinearSoftmax" in optimized_ops(path, layout=False)
    with torch.no_grad():
        fake = q.model(x).numpy()
    ort = ort_logits(ort_session(path), x)
    # a calibrated scale was 7e-4 off (floor(1 / scale) in QLinearSoftmax), now float rounding
    np.testing.assert_allclose(ort, fake, atol=1e-6 * float(np.abs(fake).max()))
