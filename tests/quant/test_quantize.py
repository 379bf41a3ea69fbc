"""Fake-quantized models: weights on their grids, a saved spec rebuilds the same model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.models import build_model
from prunewise.quant import (
    FakeQuant,
    Int8Config,
    QuantSpec,
    apply_spec,
    fold_batchnorm,
    quantize,
)

SHAPE = (1, 32, 32)


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg11_bn_small", num_classes=10, in_channels=1, width=0.25).eval()


def test_quantized_model_tracks_the_float_model(vgg) -> None:
    x = torch.randn(128, *SHAPE)
    q = quantize(vgg, x, Int8Config(calibration_images=64))
    with torch.no_grad():
        ref, out = vgg(x), q.model(x)
    assert float((out - ref).norm() / ref.norm()) < 0.1
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.9
    assert q.input_shape == SHAPE


def test_weights_and_biases_sit_on_their_integer_grids(vgg) -> None:
    q = quantize(vgg, torch.randn(32, *SHAPE), Int8Config(calibration_images=32))
    for name, scales in q.spec.weights.items():
        w = q.model.get_submodule(name).weight.detach()
        s = torch.tensor(scales).view(-1, *([1] * (w.dim() - 1)))
        codes = w / s
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        assert float(codes.abs().max()) <= 127.001


def test_every_tensor_is_quantized_once_and_outputs_stay_float(vgg) -> None:
    q = quantize(vgg, torch.randn(32, *SHAPE), Int8Config(calibration_images=32))
    gm = q.model
    modules = {n: gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    fq = [n for n, m in modules.items() if isinstance(m, FakeQuant)]
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)]
    for node in convs:  # every conv/linear reads a fake-quantized tensor
        assert node.args[0] in fq
    output = next(n for n in gm.graph.nodes if n.op == "output")
    assert output.args[0] not in fq
    assert len(fq) == len(q.spec.activations) + len(q.spec.shared)


def test_spec_round_trips_through_json(vgg) -> None:
    x = torch.randn(48, *SHAPE)
    q = quantize(vgg, x, Int8Config(calibration="mse", calibration_images=32, power_of_two=True))
    spec = QuantSpec.from_dict(json.loads(json.dumps(q.spec.to_dict())))
    rebuilt = apply_spec(fold_batchnorm(vgg), spec)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), q.model(x))


def test_spec_of_another_model_is_refused(vgg) -> None:
    q = quantize(vgg, torch.randn(32, *SHAPE), Int8Config(calibration_images=32))
    other = build_model("resnet20", num_classes=10, in_channels=1, width=0.25)
    with pytest.raises(PrunewiseError, match="does not match this model"):
        apply_spec(fold_batchnorm(other), q.spec)
    with pytest.raises(PrunewiseError, match="not a prunewise quantization file"):
        QuantSpec.from_dict({"format": "x"})


def test_too_few_calibration_images(vgg) -> None:
    with pytest.raises(PrunewiseError, match="calibration needs 256 images, got 20"):
        quantize(vgg, torch.randn(20, *SHAPE), Int8Config())
    with pytest.raises(PrunewiseError, match=r"got 1 \(a tensor of shape \(1, 32, 32\)"):
        quantize(vgg, torch.randn(*SHAPE), Int8Config())  # one image, not a batch of one


class _Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrn(torch.relu(self.conv(x)))


def test_unsupported_layer_names_it_and_the_fix() -> None:
    with pytest.raises(PrunewiseError) as err:
        quantize(_Unknown(), torch.randn(16, 1, 8, 8), Int8Config(calibration_images=16))
    text = str(err.value)
    assert "'lrn'" in text and "LocalResponseNorm" in text and "register_quant_rule" in text


def test_a_calibration_shortfall_says_what_can_be_done() -> None:
    from prunewise.quant import calibration_shortfall

    assert "ask for at most 40 (--calibration-images) or hold out more" in calibration_shortfall(
        256, 40, "hold out more"
    )
    few = calibration_shortfall(256, 8, "add images")
    assert "holds 8 images, fewer than the 16 INT8 calibration needs; add images" in few
    assert "--calibration-images" not in few  # asking for fewer cannot help
