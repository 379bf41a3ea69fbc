"""Shape propagation on meta tensors records the shapes a real forward pass would."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph, propagate_shapes, trace
from prunewise.io import load_checkpoint, save_checkpoint
from tests.layers.test_registry import BatchNormAct

trace_module = importlib.import_module("prunewise.graph.trace")


def _shapes(gm: fx.GraphModule) -> dict[str, object]:
    """Node name -> (shape, dtype, requires_grad) of what it produced, nested like the output."""

    def describe(meta: object) -> object:
        if hasattr(meta, "shape") and hasattr(meta, "dtype"):
            return (tuple(meta.shape), meta.dtype, meta.requires_grad)
        if isinstance(meta, tuple | list):
            return tuple(describe(m) for m in meta)
        return meta

    return {n.name: describe(n.meta.get("tensor_meta")) for n in gm.graph.nodes}


def _real_shapes(model: nn.Module, shape: tuple[int, ...]) -> dict[str, object]:
    gm = fx.symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, *shape))
    return _shapes(gm)


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the real forward pass is needed."""

    def refuse(*_args: object) -> None:
        raise AssertionError("propagate_shapes fell back to a real forward pass")

    monkeypatch.setattr(trace_module, "_run_on_zeros", refuse)


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "vit_b_16"]
)
def test_meta_shapes_match_a_real_forward_pass(name: str, no_fallback: None) -> None:
    size = 224 if name == "vit_b_16" else 64
    model = torchvision.models.get_model(name, weights=None).eval()
    expected = _real_shapes(model, (3, size, size))
    gm = trace(model)
    propagate_shapes(gm, (3, size, size))
    assert _shapes(gm) == expected


class _Constants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.register_buffer("shift", torch.zeros(4, 1, 1))
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)) * self.scale + self.shift
        return self.fc(torch.flatten(y, 1)).softmax(-1)


def test_parameters_are_untouched_and_training_mode_restored(no_fallback: None) -> None:
    model = _Constants().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = trace(model)
    propagate_shapes(gm, (3, 8, 8))
    assert gm.training
    assert _shapes(gm) == _real_shapes(model.eval(), (3, 8, 8))
    after = gm.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(before[k], after[k]) for k in before)
    assert int(after["bn.num_batches_tracked"]) == 0


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.flatten()[y.flatten() <= 0]  # output size depends on the values


def test_data_dependent_operation_falls_back_to_a_real_pass() -> None:
    model = _DataDependent()
    gm = trace(model)
    propagate_shapes(gm, (3, 5, 5))
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    expected = model(torch.zeros(1, 3, 5, 5)).shape
    assert tuple(out.meta["tensor_meta"].shape) == tuple(expected)


@pytest.mark.parametrize(
    "layer", [nn.BatchNorm2d(5), nn.Conv2d(5, 2, 1), nn.Conv2d(5, 5, 3, groups=5)]
)
def test_a_layer_that_does_not_fit_is_a_clear_error(layer: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer).eval()
    with pytest.raises(PrunewiseError, match="does not fit"):
        propagate_shapes(trace(model), (3, 8, 8))
    with pytest.raises((RuntimeError, ValueError)):  # the meta pass itself sees the mismatch
        trace_module._MetaShapes(trace(model)).run(torch.empty(1, 3, 8, 8, device="meta"))


def test_batch_statistics_need_more_than_one_value() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4, affine=False))
    model[2].track_running_stats = False
    model[2].running_mean = model[2].running_var = None
    with pytest.raises(PrunewiseError, match="does not fit"):
        propagate_shapes(trace(model), (3, 2, 2))


def test_a_forward_hook_is_refused_by_name_not_dropped() -> None:
    """Tracing (and so pruning and saving) would silently drop what a hook does."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    handle = model[1].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    with pytest.raises(PrunewiseError, match=r"module 1 has a forward hook .*handle.remove"):
        build_channel_graph(model, (1, 8, 8))
    handle.remove()
    build_channel_graph(model, (1, 8, 8))


class _BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in small: F.batch_norm with self.training, then its activation."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )  # fmt: skip
        return self.act(x)


def test_an_inlined_batch_norm_subclass_trains_its_statistics_after_tracing(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _BatchNormAct(4), nn.Conv2d(4, 2, 1)).eval()
    gm = trace(model, input_shape=(3, 8, 8))  # inlined in eval mode: training=False was fixed
    assert [type(gm.get_submodule(t)) for t in ("1", "1.act")] == [nn.BatchNorm2d, nn.ReLU]
    assert not any(n.target is F.batch_norm for n in gm.graph.nodes)
    assert set(gm.state_dict()) == set(model.state_dict())  # the same names and tensors
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    save_checkpoint(tmp_path / "m.pt", gm, input_shape=(3, 8, 8))
    back = load_checkpoint(tmp_path / "m.pt").model.train()  # fine-tuning: batch statistics
    before = back.get_submodule("1").running_mean.clone()
    with torch.no_grad():
        back(x)
    assert not torch.equal(before, back.get_submodule("1").running_mean)
    ref = nn.BatchNorm2d(4).train()
    ref.load_state_dict({k[2:]: v for k, v in model.state_dict().items() if k.startswith("1.")})
    with torch.no_grad():
        assert torch.allclose(back.get_submodule("1")(model[0](x)), ref(model[0](x)))


def test_a_batch_norm_frozen_by_its_own_forward_stays_frozen() -> None:
    # its forward passes training=False, whatever the mode: running statistics by design
    gm = trace(nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct(4)), input_shape=(3, 8, 8))
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [F.batch_norm]
