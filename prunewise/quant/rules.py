"""Where a quantized model holds INT8 tensors: the rule of each layer type and the quant points.

Every tensor between layers is quantized once, where it is produced: after a convolution or
linear layer (after its ReLU when the ReLU is its only user, as a DPU fuses it), after an
addition, concatenation, pooling or any other float operation. Max pooling, flatten, reshape
and dropout keep their input's scale (they move int8 values without changing them). The
model's outputs stay float. This is the placement ONNX Runtime's QDQ fusions expect.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunewise.errors import PrunewiseError
from prunewise.graph.trace import node_shape

__all__ = ["QuantPoint", "QuantRule", "find_points", "quant_rule", "register_quant_rule"]


class QuantRule(Enum):
    """How a layer is quantized."""

    WEIGHTED = "weighted"  # conv / linear: int8 per-channel weights, int32 bias
    ACTIVATION = "activation"  # ReLU-like: fused into the layer before it
    PASSTHROUGH = "passthrough"  # moves values without changing them: keeps the input's scale
    FLOAT = "float"  # computed in float between dequantize and quantize


_MODULES: dict[type, QuantRule] = {}
_FUNCTIONS: dict[Callable | str, QuantRule] = {}


def register_quant_rule(key: type[nn.Module] | Callable | str, rule: QuantRule) -> None:
    """Tell the quantizer how to treat a module type, a function, or a tensor method name."""
    if isinstance(key, type):
        _MODULES[key] = rule
    else:
        _FUNCTIONS[key] = rule


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear):
    register_quant_rule(_t, QuantRule.WEIGHTED)
for _t in (nn.ReLU, nn.ReLU6):
    register_quant_rule(_t, QuantRule.ACTIVATION)
for _t in (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
):
    register_quant_rule(_t, QuantRule.PASSTHROUGH)
for _t in (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.SiLU,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Softmax,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Upsample,
):
    register_quant_rule(_t, QuantRule.FLOAT)
for _f in (F.relu, torch.relu, torch.relu_, F.relu6, "relu", "relu_"):
    register_quant_rule(_f, QuantRule.ACTIVATION)
for _f in (
    torch.flatten,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool2d,
    F.dropout,
    operator.getitem,
    "flatten",
    "view",
    "reshape",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "permute",
    "transpose",
):
    register_quant_rule(_f, QuantRule.PASSTHROUGH)


def _stochastic_depth_rule() -> None:
    try:
        from torchvision.ops import StochasticDepth, stochastic_depth
    except ImportError:  # torchvision is optional here
        return
    register_quant_rule(StochasticDepth, QuantRule.PASSTHROUGH)  # identity in eval mode
    register_quant_rule(stochastic_depth, QuantRule.PASSTHROUGH)


_stochastic_depth_rule()


def quant_rule(gm: fx.GraphModule, node: fx.Node) -> QuantRule:
    """The rule of one traced operation; an unknown module type is an error that says what to do."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        for cls in type(module).__mro__:
            if cls in _MODULES:
                return _MODULES[cls]
        raise PrunewiseError(
            f"cannot quantize layer '{node.target}' of type {type(module).__name__}: INT8 "
            "quantization knows Conv1d/2d/3d, Linear, BatchNorm, ReLU, pooling, activations and "
            "reshapes; register a rule with prunewise.quant.register_quant_rule("
            f"{type(module).__name__}, QuantRule.FLOAT) to run it in float between int8 tensors"
        )
    key = node.target
    return _FUNCTIONS.get(key, QuantRule.FLOAT)


@dataclass(frozen=True)
class QuantPoint:
    """A tensor that is quantized: the node producing it, and the node whose scale it uses."""

    node: str
    source: str  # == node for a point with its own calibrated scale

    @property
    def own(self) -> bool:
        """Whether this point is calibrated (else it reuses `source`'s scale)."""
        return self.node == self.source


def _first_tensor_arg(node: fx.Node) -> fx.Node | None:
    for a in node.args:
        if isinstance(a, fx.Node) and node_shape(a) is not None:
            return a
    return None


def _float_tail(gm: fx.GraphModule, rules: dict[str, QuantRule]) -> set[str]:
    """Nodes whose values reach only the model's outputs, through activations or reshapes.

    They stay float: the logits keep full precision (an INT8 engine dequantizes its last layer).
    """
    tail: set[str] = set()
    through = (QuantRule.ACTIVATION, QuantRule.PASSTHROUGH)
    for node in reversed(gm.graph.nodes):
        users = list(node.users)
        if users and all(
            u.op == "output" or (u.name in tail and rules.get(u.name) in through) for u in users
        ):
            tail.add(node.name)
    return tail


def find_points(gm: fx.GraphModule, *, split_activations: bool = False) -> list[QuantPoint]:
    """The quant points of a traced model whose node shapes are known, in graph order.

    With `split_activations`, a layer whose ReLU is fused also quantizes its own output with
    the ReLU's parameters (the same numbers when the zero point is 0, as with power-of-two
    scales); ONNX Runtime then runs the layer in int8 even though it cannot drop the ReLU.
    """
    rules: dict[str, QuantRule] = {}
    points: dict[str, QuantPoint] = {}
    for node in gm.graph.nodes:
        if node.op in ("output", "get_attr") or node_shape(node) is None:
            continue
        if node.op == "placeholder":
            points[node.name] = QuantPoint(node.name, node.name)
            continue
        rule = rules[node.name] = quant_rule(gm, node)
        src = _first_tensor_arg(node)
        if rule in (QuantRule.WEIGHTED, QuantRule.FLOAT):
            users = list(node.users)
            fused = len(users) == 1 and users[0].op != "output"
            if fused and quant_rule(gm, users[0]) is QuantRule.ACTIVATION:
                if split_activations:
                    points[node.name] = QuantPoint(node.name, users[0].name)
                continue  # the activation after it is the point
            points[node.name] = QuantPoint(node.name, node.name)
        elif src is not None and src.name in points and points[src.name].source != node.name:
            points[node.name] = QuantPoint(node.name, points[src.name].source)
        else:  # an activation fused into the layer before it, or a pass-through of float data
            points[node.name] = QuantPoint(node.name, node.name)
    tail = _float_tail(gm, rules)
    kept = [p for p in points.values() if p.node not in tail]
    sources = {p.source for p in kept}
    return [p for p in kept if p.own or p.source in sources]
