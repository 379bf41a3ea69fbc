"""ONNX Runtime execution: logits against torch, fixed-batch padding, accuracy, latency, errors."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunewise.errors import PrunewiseError
from prunewise.export.runtime import (
    Latency,
    LatencyConfig,
    latency_grid,
    measure_latency,
    onnx_input_shape,
    optimized_ops,
    ort_accuracy,
    ort_agreement,
    ort_logits,
    ort_session,
)

SHAPE = (3, 8, 8)
CLASSES = 5


def _export(model: nn.Module, path: Path, *, dynamic: bool, batch: int = 4) -> Path:
    x = torch.randn(batch, *SHAPE)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=axes,
        )
    return path


@pytest.fixture
def model(randomize_bn: Callable[..., nn.Module]) -> nn.Module:
    """conv + bn + relu + pool + linear, in eval mode with non-trivial BatchNorm statistics."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )
    return randomize_bn(net)


@pytest.fixture
def dynamic_path(model: nn.Module, tmp_path: Path) -> Path:
    return _export(model, tmp_path / "dynamic.onnx", dynamic=True)


@pytest.fixture
def fixed_path(model: nn.Module, tmp_path: Path) -> Path:
    return _export(model, tmp_path / "fixed.onnx", dynamic=False, batch=4)


def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def test_logits_match_torch_in_batches(model: nn.Module, dynamic_path: Path) -> None:
    x = torch.randn(10, *SHAPE)
    session = ort_session(dynamic_path)
    got = ort_logits(session, x, batch_size=3)  # chunks of 3, 3, 3, 1
    assert got.shape == (10, CLASSES) and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch_logits(model, x), rtol=1e-4, atol=1e-5)
    # numpy float64, non-contiguous input gives the same answer
    x64 = np.asfortranarray(x.numpy().astype(np.float64))
    np.testing.assert_allclose(ort_logits(session, x64), got, rtol=1e-6, atol=1e-6)


def test_fixed_batch_is_padded(model: nn.Module, fixed_path: Path) -> None:
    session = ort_session(fixed_path)
    assert onnx_input_shape(session) == (4, *SHAPE)
    x = torch.randn(7, *SHAPE)  # one full chunk of 4, then 3 rows padded to 4
    got = ort_logits(session, x, batch_size=256)  # batch_size gives way to the fixed batch
    assert got.shape == (7, CLASSES)
    np.testing.assert_allclose(got, _torch_logits(model, x), rtol=1e-4, atol=1e-5)
    one = ort_logits(session, x[:1])
    np.testing.assert_allclose(one, got[:1], rtol=1e-5, atol=1e-6)


def test_input_shape_of_path_and_session(dynamic_path: Path) -> None:
    assert onnx_input_shape(dynamic_path) == (None, *SHAPE)
    assert onnx_input_shape(ort_session(dynamic_path, threads=2)) == (None, *SHAPE)


def test_accuracy_and_agreement(model: nn.Module, dynamic_path: Path) -> None:
    x = torch.randn(12, *SHAPE)
    logits = _torch_logits(model, x)
    pred = torch.from_numpy(logits.argmax(axis=1))
    labels = pred.clone()
    labels[:3] = (pred[:3] + 1) % CLASSES  # exactly 3 of 12 wrong
    loader = DataLoader(TensorDataset(x, labels), batch_size=5)  # 5, 5, 2
    session = ort_session(dynamic_path)
    assert ort_accuracy(session, loader) == pytest.approx(75.0)

    assert ort_agreement(session, x, logits) == pytest.approx(1.0)
    shuffled = np.roll(logits, 1, axis=1)  # argmax moves by one class in every row
    assert ort_agreement(session, x, shuffled) == pytest.approx(0.0)
    half = logits.copy()
    half[:6] = shuffled[:6]
    assert ort_agreement(session, x, torch.from_numpy(half)) == pytest.approx(0.5)


def test_latency(dynamic_path: Path) -> None:
    lat = measure_latency(dynamic_path, SHAPE, batch=2, threads=1, warmup=1, repeats=3)
    assert lat.batch == 2 and lat.threads == 1 and lat.runs == 3
    assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms < 10_000
    assert lat.fps == pytest.approx(2 * 1000 / lat.median_ms)
    d = lat.to_dict()
    assert set(d) == {"batch", "threads", "median_ms", "p10_ms", "p90_ms", "runs", "fps"}
    assert d["fps"] == pytest.approx(lat.fps)


def test_latency_stops_after_max_seconds(dynamic_path: Path) -> None:
    lat = measure_latency(dynamic_path, SHAPE, batch=1, threads=1, repeats=50, max_seconds=1e-9)
    assert lat.runs == 3  # the time budget is spent at once, but 3 runs are always taken


def test_latency_grid(dynamic_path: Path) -> None:
    config = LatencyConfig(batch_sizes=(1, 3), threads=(1, 2), warmup=0, repeats=3)
    grid = latency_grid(dynamic_path, SHAPE, config)
    assert [(r.threads, r.batch) for r in grid] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert all(r.runs == 3 and r.median_ms > 0 for r in grid)


def test_latency_fixed_batch(fixed_path: Path) -> None:
    assert measure_latency(fixed_path, SHAPE, batch=4, threads=1, repeats=3).batch == 4
    with pytest.raises(PrunewiseError, match=r"fixed batch size of 4 but batch=2"):
        measure_latency(fixed_path, SHAPE, batch=2, threads=1, repeats=3)
    with pytest.raises(PrunewiseError, match=r"fixed batch size of 4 but batch=1"):
        latency_grid(fixed_path, SHAPE, LatencyConfig(batch_sizes=(4, 1), repeats=3))


def test_latency_messages_name_the_files_own_inputs(model: nn.Module, tmp_path: Path) -> None:
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    x = torch.randn(1, *SHAPE)
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Two(), (x, x), tmp_path / "two.onnx", dynamo=False, input_names=["a", "b"]
        )
        torch.onnx.export(model, (x,), tmp_path / "img.onnx", dynamo=False, input_names=["img"])
    with pytest.raises(PrunewiseError, match=r"has 2 inputs \['a', 'b'\]"):
        latency_grid(tmp_path / "two.onnx", SHAPE, LatencyConfig(batch_sizes=(4,), repeats=3))
    with pytest.raises(PrunewiseError, match=r"dynamic_axes=\{'img': \{0: 'batch'\}\}"):
        latency_grid(tmp_path / "img.onnx", SHAPE, LatencyConfig(batch_sizes=(4,), repeats=3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_sizes": ()}, r"batch_sizes .* must be a non-empty list of integers in \[1,"),
        ({"batch_sizes": (1, 0)}, r"batch_sizes .* must be a non-empty list of integers"),
        ({"batch_sizes": (1.5,)}, r"batch_sizes .* must be a non-empty list of integers"),
        ({"threads": (True,)}, r"threads .* must be a non-empty list of integers"),
        ({"threads": (-1,)}, r"threads .* must be a non-empty list of integers"),
        ({"warmup": -1}, r"warmup \(--warmup\) must be an integer in \[0, 10000\], got -1"),
        ({"repeats": 2}, r"repeats \(--repeats\) must be an integer in \[3, .*got 2"),
        ({"max_seconds": 0}, r"max_seconds .* must be a number in \(0, 86400\], got 0"),
        ({"max_seconds": float("nan")}, r"max_seconds .* must be a number in \(0, 86400\]"),
        ({"max_seconds": float("inf")}, r"max_seconds .* must be a number in \(0, 86400\]"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(PrunewiseError, match=match):
        LatencyConfig(**kwargs)


def test_config_defaults_and_lists() -> None:
    config = LatencyConfig(batch_sizes=[1, 8])  # type: ignore[arg-type]
    assert config.batch_sizes == (1, 8) and config.threads == (1, 2)
    assert (config.warmup, config.repeats, config.max_seconds) == (5, 30, 20.0)


def test_latency_record_validation() -> None:
    with pytest.raises(PrunewiseError, match="p10 <= median <= p90"):
        Latency(batch=1, threads=1, median_ms=2.0, p10_ms=3.0, p90_ms=4.0, runs=3)
    with pytest.raises(PrunewiseError, match="median"):
        Latency(batch=1, threads=1, median_ms=0.0, p10_ms=0.0, p90_ms=0.0, runs=3)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(PrunewiseError, match=r"no such ONNX file: .*nope\.onnx"):
        ort_session(missing)
    with pytest.raises(PrunewiseError, match="no such ONNX file"):
        measure_latency(missing, SHAPE, batch=1, threads=1)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \xff\xfe" * 20)
    with pytest.raises(PrunewiseError, match=r"garbage\.onnx is not a valid ONNX model") as err:
        ort_session(garbage)
    assert "\n" not in str(err.value)
    with pytest.raises(PrunewiseError, match="is not a valid ONNX model"):
        onnx_input_shape(garbage)


@pytest.mark.parametrize("threads", [0, 1.0, True])
def test_threads_must_be_positive_int(dynamic_path: Path, threads: object) -> None:
    with pytest.raises(PrunewiseError, match="threads must be an integer >= 1"):
        ort_session(dynamic_path, threads=threads)  # type: ignore[arg-type]


def test_shape_mismatch_names_both_shapes(dynamic_path: Path) -> None:
    session = ort_session(dynamic_path)
    with pytest.raises(PrunewiseError) as err:
        ort_logits(session, torch.randn(2, 1, 8, 8))
    assert "(1, 8, 8)" in str(err.value) and "(3, 8, 8)" in str(err.value)
    with pytest.raises(PrunewiseError, match=r"\(3, 16, 16\).*\(3, 8, 8\)"):
        measure_latency(dynamic_path, (3, 16, 16), batch=1, threads=1)
    with pytest.raises(PrunewiseError, match=r"\(8, 8\).*\(3, 8, 8\)"):
        ort_logits(session, np.zeros((2, 8, 8), dtype=np.float32))


def test_optimized_ops_lists_what_ort_runs_and_prints_nothing(
    dynamic_path: Path, tmp_path: Path, capfd
) -> None:
    plain = optimized_ops(dynamic_path, layout=False)
    with_layout = optimized_ops(dynamic_path)
    assert plain[0] == "FusedConv" and "Gemm" in plain  # conv + ReLU fused: what ORT runs
    assert "Gemm" in with_layout and any("Conv" in op for op in with_layout)
    assert capfd.readouterr().err == ""  # not ORT's notice on saving NCHWc layouts
    with pytest.raises(PrunewiseError, match="no such ONNX file"):
        optimized_ops(tmp_path / "none.onnx")


def test_an_input_larger_than_free_memory_is_refused_before_timing(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from prunewise.export import LatencyConfig, latency_grid

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1_000_000, 1_000_000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1_000_000, 1_000_000])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "huge.onnx")
    config = LatencyConfig(batch_sizes=(1,), threads=(1,))
    with pytest.raises(PrunewiseError, match=r"takes 11175.9 GB, more than the .* free"):
        latency_grid(tmp_path / "huge.onnx", None, config)
