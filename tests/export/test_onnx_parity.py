"""ONNX Runtime reproduces PyTorch: float logits to 1e-4, INT8 top-1 to the fake-quant model."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.export import (
    FLOAT_TOLERANCE,
    export_float,
    export_int8,
    exporter_of,
    int8_weight_layers,
    optimized_ops,
    ort_logits,
    ort_session,
    parity_summary,
)
from prunewise.export.onnx_export import _constants
from prunewise.graph import build_channel_graph
from prunewise.models import build_model
from prunewise.prune import apply_plan, uniform_plan
from prunewise.quant import Int8Config, quantize

CASES = [
    ("vgg11_bn_small", (1, 32, 32), False),
    ("vgg11_bn_small", (1, 32, 32), True),
    ("resnet20", (3, 32, 32), False),
    ("resnet20", (3, 32, 32), True),
]


def _model(name, shape, pruned, randomize_bn):
    model = randomize_bn(build_model(name, num_classes=10, in_channels=shape[0], width=0.5))
    if pruned:
        graph = build_channel_graph(model, shape)
        model = randomize_bn(apply_plan(graph, uniform_plan(graph, 0.4)))
    return model


@pytest.mark.parametrize(("name", "shape", "pruned"), CASES)
def test_ort_parity_float_and_int8(name, shape, pruned, randomize_bn, tmp_path) -> None:
    model = _model(name, shape, pruned, randomize_bn)
    x = torch.randn(256, *shape, generator=torch.Generator().manual_seed(3))
    q = quantize(model, x[:64], Int8Config(calibration_images=64))
    fpath = export_float(model, tmp_path / "m.onnx", shape)
    ipath = export_int8(q, tmp_path / "m.int8.onnx")
    with torch.no_grad():
        tf, tq = model(x).numpy(), q.model(x).numpy()
    of, oq = ort_logits(ort_session(fpath), x), ort_logits(ort_session(ipath), x)
    parity = parity_summary(tf, of, tq, oq)
    assert parity.float_max_rel_error <= FLOAT_TOLERANCE
    assert parity.int8_top1_agreement >= 0.99
    convs = sum(1 for n in onnx.load(fpath).graph.node if n.op_type in ("Conv", "Gemm"))
    assert int8_weight_layers(onnx.load(ipath)) == convs  # every layer has int8 weights
    assert ipath.stat().st_size < 0.7 * fpath.stat().st_size


def test_ort_fuses_the_int8_graph_into_integer_kernels(randomize_bn, tmp_path) -> None:
    model = _model("resnet20", (3, 32, 32), False, randomize_bn)
    q = quantize(model, torch.randn(32, 3, 32, 32), Int8Config(calibration_images=32))
    ops = optimized_ops(export_int8(q, tmp_path / "m.int8.onnx"), layout=False)
    assert ops.count("QLinearConv") == 21 and "Conv" not in ops
    assert ops.count("QLinearAdd") == 9 and "QGemm" in ops


def _scales(model: onnx.ModelProto) -> list[float]:
    consts = _constants(model.graph)
    out = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = consts[node.input[1]]
            if node.input[0] in consts and consts[node.input[0]].dtype == np.int32:
                continue  # a bias scale is input scale x weight scale: a power of two as well
            out.extend(float(v) for v in np.ravel(scale))
    return out


def test_power_of_two_scales_are_powers_of_two_in_the_graph(randomize_bn, tmp_path) -> None:
    model = _model("resnet20", (3, 32, 32), True, randomize_bn)
    x = torch.randn(128, 3, 32, 32)
    cfg = Int8Config(calibration="mse", calibration_images=64, power_of_two=True)
    q = quantize(model, x[:64], cfg)
    path = export_int8(q, tmp_path / "p2.onnx")
    graph = onnx.load(path)
    scales = _scales(graph)
    assert len(scales) > 40
    assert all(math.log2(s) == round(math.log2(s)) for s in scales)
    nodes = graph.graph.node
    consts = _constants(graph.graph)
    quantizers = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert all(int(consts[n.input[2]]) == 0 for n in quantizers)  # symmetric activations
    with torch.no_grad():
        tq = q.model(x).numpy()
    oq = ort_logits(ort_session(path), x)
    assert float((oq.argmax(1) == tq.argmax(1)).mean()) >= 0.99


class _DataDependent(nn.Module):
    """A branch on a tensor's value: torch.export refuses it, the TorchScript tracer follows
    the branch taken."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 2 if bool(y.sum() > -1e9) else y


def test_the_dynamo_exporter_writes_float_and_int8_and_the_torchscript_one_is_a_fallback(
    randomize_bn, tmp_path
) -> None:
    model = _model("resnet20", (3, 32, 32), True, randomize_bn)
    q = quantize(model, torch.randn(32, 3, 32, 32), Int8Config(calibration_images=32))
    assert exporter_of(onnx.load(export_float(model, tmp_path / "f.onnx", (3, 32, 32)))) == (
        "dynamo"
    )
    assert exporter_of(onnx.load(export_int8(q, tmp_path / "q.onnx"))) == "dynamo"
    odd = _DataDependent().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_float(odd, tmp_path / "d.onnx", (1, 8, 8))
    assert exporter_of(onnx.load(path)) == "torchscript"
    assert not [w for w in caught if "deprecat" in str(w.message).lower()]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(  # atol: float32 noise on outputs near 0 (unseeded x)
            ort_logits(ort_session(path), x), odd(x).numpy(), rtol=1e-5, atol=1e-6
        )


def test_export_without_an_input_size_asks_for_it(tmp_path) -> None:
    model = build_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(PrunewiseError, match="--input-size"):
        export_float(model, tmp_path / "m.onnx", ())


def test_a_float64_model_in_train_mode_exports_float32_and_stays_as_it_was(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    model = model.double().train()
    path = export_float(model, tmp_path / "m.onnx", (1, 6, 6))
    assert model.training and model[0].weight.dtype == torch.float64
    x = torch.rand(3, 1, 6, 6)
    got = ort_logits(ort_session(path), x)
    want = model.eval()(x.double()).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    calibration = torch.rand(16, 1, 6, 6, dtype=torch.float64)
    qmodel = quantize(model, calibration, Int8Config(calibration_images=16))
    assert qmodel.model(x).dtype == torch.float32 and model[0].weight.dtype == torch.float64


class _Tokens(nn.Module):
    """Linear layers on more than two dimensions: an MLP over channels-last feature maps (as
    ConvNeXt's blocks) and over tokens, which the exporter writes as MatMul, not Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x)).permute(0, 2, 3, 1)  # (N, H, W, C)
        y = self.down(torch.relu(self.up(y))) + y
        return self.head(y.flatten(1, 2).mean(1))


def test_linear_layers_on_tokens_store_int8_weights_and_fuse(tmp_path) -> None:
    model = _Tokens().eval()
    x = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    q = quantize(model, x[:32], Int8Config(calibration_images=32))
    fpath = export_float(model, tmp_path / "m.onnx", (3, 16, 16))
    ipath = export_int8(q, tmp_path / "m.int8.onnx")
    int8 = onnx.load(ipath)
    assert int8_weight_layers(int8) == 4  # the conv, the head's Gemm and both MatMuls
    floats = [i for i in int8.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert max(int(np.prod(i.dims)) for i in floats) < 16 * 32  # no float weight matrix left
    with torch.no_grad():
        tf, tq = model(x).numpy(), q.model(x).numpy()
    of, oq = ort_logits(ort_session(fpath), x), ort_logits(ort_session(ipath), x)
    assert parity_summary(tf, of, tq, oq).int8_top1_agreement >= 0.99
    np.testing.assert_allclose(oq, tq, atol=0.05 * float(np.abs(tq).max()))
    assert optimized_ops(ipath, layout=False).count("MatMulIntegerToFloat") == 2


def test_the_opset_asked_for_is_the_one_written_or_refused(randomize_bn, tmp_path) -> None:
    model = _model("vgg11_bn_small", (1, 32, 32), True, randomize_bn)
    x = torch.randn(32, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    q = quantize(model, x, Int8Config(calibration_images=32))
    with torch.no_grad():
        want = model(x).numpy()
    for opset, exporter in ((13, "torchscript"), (17, "torchscript"), (20, "dynamo")):
        for path in (
            export_float(model, tmp_path / f"f{opset}.onnx", (1, 32, 32), opset=opset),
            export_int8(q, tmp_path / f"q{opset}.onnx", opset=opset),
        ):
            proto = onnx.load(path)
            assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
            assert exporter_of(proto) == exporter
        got = ort_logits(ort_session(tmp_path / f"f{opset}.onnx"), x)
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    from prunewise.export.onnx_export import newest_opset

    export_float(model, tmp_path / "np.onnx", (1, 32, 32), opset=np.int64(17))  # NumPy's int
    from prunewise.export import DeployConfig

    with pytest.raises(PrunewiseError, match=r"opset \(--opset\) must be at most"):
        DeployConfig(opset=newest_opset() + 1)  # a run refuses it before its work
    for bad in (12, newest_opset() + 1, 18.0):
        with pytest.raises(PrunewiseError, match=r"opset must be an integer in \[13, \d+\]"):
            export_float(model, tmp_path / "bad.onnx", (1, 32, 32), opset=bad)


def test_export_int8_refuses_a_model_quantized_for_another_backend(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    q = quantize(
        model, torch.randn(16, 1, 8, 8), Int8Config(calibration_images=16, backend="onnxruntime")
    )
    with pytest.raises(PrunewiseError, match=r"asks for the .onnxruntime. backend.*export_model"):
        export_int8(q, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
