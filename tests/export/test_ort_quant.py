"""The ONNX Runtime INT8 backend: which settings pick it, and what its files compute."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch

from prunewise.errors import PrunewiseError
from prunewise.export import (
    DEPLOY_FILES,
    INT8_FLOAT_TOLERANCE,
    DeployConfig,
    deploy,
    export_float,
    int8_weight_layers,
    optimized_ops,
    ort_logits,
    ort_quantize,
    ort_session,
)
from prunewise.models import build_model
from prunewise.quant import Int8Config, quantize

SHAPE = (3, 32, 32)


def test_prunewise_writes_the_int8_file_unless_onnx_runtime_is_asked_for() -> None:
    assert Int8Config().backend == "prunewise"
    ort_config = Int8Config(backend="onnxruntime", calibration="minmax", weight_bits=8)
    assert ort_config.backend == "onnxruntime"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"power_of_two": True}, "power-of-two"),
        ({"calibration": "mse"}, "mse calibration"),
        ({"weight_bits": 5}, "5-bit weights"),
    ],
)
def test_onnx_runtime_asked_for_what_it_lacks_is_refused(options, named) -> None:
    with pytest.raises(PrunewiseError, match=named) as err:
        Int8Config(backend="onnxruntime", **options)
    assert "--int8-backend" in str(err.value)


@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
def test_onnx_runtime_int8_is_fused_close_to_float_and_to_prunewise(
    calibration, randomize_bn, tmp_path, capsys
) -> None:
    model = randomize_bn(build_model("resnet20", num_classes=10, in_channels=3, width=0.5))
    x = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(3))
    config = Int8Config(calibration=calibration, calibration_images=64, backend="onnxruntime")
    fpath = export_float(model, tmp_path / "m.onnx", SHAPE)
    ipath = ort_quantize(fpath, x[:64], config, tmp_path / "m.int8.onnx")
    assert capsys.readouterr().out == ""  # ORT's calibrators print their progress: not to users
    ops = optimized_ops(ipath, layout=False)
    assert ops.count("QLinearConv") == 21 and "Conv" not in ops and "QGemm" in ops
    assert int8_weight_layers(onnx.load(ipath)) == 22
    with torch.no_grad():
        ref, fake = model(x).numpy(), quantize(model, x[:64], config).model(x).numpy()
    got = ort_logits(ort_session(ipath), x)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < INT8_FLOAT_TOLERANCE
    assert (got.argmax(1) == fake.argmax(1)).mean() >= 0.95  # two quantizers, same ranges
    assert not list(tmp_path.glob(".ort-quant-*"))  # its temporary files are gone


class _UpsampleConcat(torch.nn.Module):
    """A decoder step: upsampled features concatenated with the skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c = torch.nn.Conv2d(16, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x).relu()
        up = torch.nn.functional.interpolate(self.b(a).relu(), scale_factor=2.0)
        return self.fc(self.c(torch.cat([a, up], 1)).relu().mean((2, 3)))


def test_onnx_runtime_quantizes_upsampling_and_concatenation_and_leaves_no_files(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # ORT's symbolic shape inference failed here, writing files
    fpath = export_float(_UpsampleConcat().eval(), tmp_path / "m.onnx", (3, 48, 48))
    config = Int8Config(calibration_images=16, backend="onnxruntime")
    ort_quantize(fpath, torch.randn(16, 3, 48, 48), config, tmp_path / "q.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "q.onnx"]
    assert optimized_ops(tmp_path / "q.onnx", layout=False).count("QLinearConv") == 3


def test_ort_quantize_refuses_a_prunewise_config_and_too_few_images(tmp_path) -> None:
    model = build_model("vgg11_bn_small", num_classes=10, in_channels=3, width=0.125)
    fpath = export_float(model, tmp_path / "m.onnx", SHAPE)
    with pytest.raises(PrunewiseError, match="backend is onnxruntime"):
        ort_quantize(fpath, torch.randn(16, *SHAPE), Int8Config(power_of_two=True), tmp_path / "q")
    with pytest.raises(PrunewiseError, match="needs 32 images, got 8"):
        ort_quantize(
            fpath,
            torch.randn(8, *SHAPE),
            Int8Config(calibration_images=32, backend="onnxruntime"),
            fpath,
        )


class _Vanishing(torch.nn.Module):
    """An activation of a few float steps' range around 0.5 (a saturated gate)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((0.5 + self.conv(x) * 1e-7).mean((2, 3)))


def test_a_percentile_ort_calibration_that_cannot_bin_says_to_use_minmax(tmp_path) -> None:
    fpath = export_float(_Vanishing().eval(), tmp_path / "m.onnx", SHAPE)
    images = torch.randn(16, *SHAPE)
    config = Int8Config(calibration_images=16, backend="onnxruntime", calibration="percentile")
    with pytest.raises(PrunewiseError, match="calibration minmax"):
        ort_quantize(fpath, images, config, tmp_path / "q.onnx")
    minmax = Int8Config(calibration_images=16, backend="onnxruntime", calibration="minmax")
    assert ort_quantize(fpath, images, minmax, tmp_path / "q.onnx").is_file()


@pytest.mark.parametrize("backend", ["onnxruntime", "prunewise"])
def test_deploy_records_which_quantizer_wrote_the_int8_file(
    backend, randomize_bn, tmp_path
) -> None:
    model = randomize_bn(build_model("vgg11_bn_small", num_classes=10, in_channels=3, width=0.25))
    x = torch.randn(96, *SHAPE, generator=torch.Generator().manual_seed(1))
    y = torch.arange(96) % 10
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    int8 = Int8Config(calibration_images=32, backend=backend)
    record = deploy(model, x[:32], loader, tmp_path, DeployConfig(int8=int8, measure_latency=False))
    assert record.config["int8"]["backend"] == backend
    assert record.parity.ok, record.parity
    # prunewise's file is checked against its PyTorch twin, ORT's against its own QDQ graph
    reference = "pytorch fake-quant" if backend == "prunewise" else "qdq graph, unfused"
    assert record.parity.int8_reference == reference
    assert (tmp_path / "quant.json").is_file() == (backend == "prunewise")
    assert int8_weight_layers(onnx.load(tmp_path / "model.int8.onnx")) == 11


def test_the_unfused_qdq_graph_is_the_reference_that_catches_wrong_kernels(tmp_path) -> None:
    """ORT's fused INT8 kernels against the same file run as written: same numbers (7-bit
    weights compute exactly on any x86 CPU), so a saturating kernel would show up."""
    model = build_model("vgg11_bn_small", num_classes=10, in_channels=3, width=0.25).eval()
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(2))
    path = ort_quantize(
        export_float(model, tmp_path / "m.onnx", SHAPE), x[:32],
        Int8Config(calibration_images=32, backend="onnxruntime"),
        tmp_path / "m.int8.onnx",
    )  # fmt: skip
    fused = ort_logits(ort_session(path), x)
    written = ort_logits(ort_session(path, optimize=False), x)
    assert (fused.argmax(1) == written.argmax(1)).mean() >= 0.99
    assert np.abs(fused - written).max() <= 0.05 * np.abs(written).max()


def test_a_deploy_into_a_used_folder_never_leaves_the_earlier_models_files(
    randomize_bn, tmp_path, monkeypatch
) -> None:
    model = randomize_bn(build_model("vgg11_bn_small", num_classes=10, in_channels=3, width=0.25))
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.arange(64) % 10), batch_size=32
    )
    config = DeployConfig(int8=Int8Config(calibration_images=32), measure_latency=False)
    deploy(model, x[:32], loader, tmp_path, config)
    assert {p.name for p in tmp_path.iterdir()} >= set(DEPLOY_FILES)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the next model is quantized

    monkeypatch.setattr(sys.modules["prunewise.export.deploy"], "quantize", stopped)
    with pytest.raises(KeyboardInterrupt):
        deploy(model, x[:32], loader, tmp_path, config)
    assert not any((tmp_path / name).exists() for name in DEPLOY_FILES)
