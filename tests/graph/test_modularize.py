"""Layers the tracer inlined into function calls become modules again, with the same outputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunewise.graph.modularize import bake_constants, modularize
from prunewise.graph.trace import trace
from prunewise.quant import Int8Config, fold_batchnorm, quantize, unfolded_batchnorms


class _SameConv(nn.Conv2d):
    """timm's Conv2dSame: pads from the input's size, then F.conv2d on its own tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if ph > 0 or pw > 0:  # a branch on a spatial size
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _StdConv(nn.Conv2d):
    """timm's StdConv2d: the weight standardized at every call (computed from stored tensors)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(1, self.out_channels, -1)
        w = F.batch_norm(w, None, None, training=True, momentum=0.0, eps=1e-6)
        return F.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)


class _Head(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.std = _StdConv(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.same = _SameConv(16, 16, 3, stride=2, groups=16)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = _Head(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.std(x)))
        y = F.relu(self.bn2(self.same(y)))
        return self.head(y.mean((2, 3)))


def _calls(gm: fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_inlined_layers_become_modules_with_the_same_outputs(randomize_bn) -> None:
    model = randomize_bn(_Net()).eval()
    gm = trace(model, input_shape=(3, 9, 9))
    assert F.conv2d in _calls(gm) and F.linear in _calls(gm)
    assert modularize(gm) == 3
    assert not {F.conv2d, F.linear, F.batch_norm} & set(_calls(gm))
    layers = {type(m).__name__: m for m in gm.modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert set(layers) == {"Conv2d", "Linear"}
    depthwise = [m for m in gm.modules() if isinstance(m, nn.Conv2d) and m.groups == 16]
    assert len(depthwise) == 1 and depthwise[0].stride == (2, 2)
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)


def test_baking_leaves_what_depends_on_the_input_and_in_place_methods() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scaled = self.w * 2  # from a stored tensor alone: baked
            return x @ scaled + self.w.mul_(1)[0]  # an in-place method: left as it is

    gm = trace(Net())
    assert bake_constants(gm) == 1
    gm.recompile()
    assert any(n.op == "call_method" and n.target == "mul_" for n in gm.graph.nodes)
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), x @ (gm.w * 2) + gm.w[0])


def test_their_batch_norms_fold_and_int8_quantizes_them(randomize_bn) -> None:
    model = randomize_bn(_Net()).eval()
    folded = fold_batchnorm(model, (3, 9, 9))
    assert unfolded_batchnorms(folded) == []
    x = torch.randn(8, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    q = quantize(model, torch.randn(16, 3, 9, 9), Int8Config(calibration_images=16))
    assert len(q.spec.weights) == 3  # the three inlined layers (they were float before)


class _BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: the mode decided in Python, passed to F.batch_norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = self.training
        y = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training, 0.1, self.eps
        )
        return F.relu(y)


def test_a_model_in_training_mode_traces_as_at_inference(randomize_bn) -> None:
    """Inlined code that reads self.training is recorded as in eval mode (a pruned, saved or
    deployed graph must compute as at inference), except a BatchNorm subclass's call, which
    becomes its torch.nn BatchNorm again and follows the graph's mode (fine-tuning updates its
    statistics); the graph and the model keep the model's mode."""
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), _BatchNormAct(8))).train()
    gm = trace(model)
    assert model.training and gm.training
    assert type(gm.get_submodule("1")) is nn.BatchNorm2d
    assert not [n for n in gm.graph.nodes if n.target is F.batch_norm]
    x = torch.randn(1, 3, 8, 8)  # one image: batch statistics would be far from running ones
    with torch.no_grad():
        torch.testing.assert_close(gm.eval()(x), model.eval()(x))
