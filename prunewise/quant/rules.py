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

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunewise.errors import PrunewiseError
from prunewise.graph.trace import node_shape
from prunewise.layers.registry import (
    LayerSpec,
    QuantRule,
    layer_spec,
    register_layer,
    update_layer,
)

__all__ = ["QuantPoint", "QuantRule", "find_points", "quant_rule", "register_quant_rule"]


_FUNCTIONS: dict[Callable | str, QuantRule] = {}


def _no_channel_rule(op, module: nn.Module) -> None:
    """The channel rule of a type known only to the quantizer: its channels are blocked."""
    return op.unknown(f"no channel rule for module {type(module).__name__} {op.name}")


def register_quant_rule(key: type[nn.Module] | Callable | str, rule: QuantRule) -> None:
    """Tell the quantizer how to treat a module type (kept in its layer registry entry), a
    function, or a tensor method name."""
    if isinstance(key, type):
        if layer_spec(key) is not None:
            update_layer(key, quant=rule)
        else:
            register_layer(key, LayerSpec(_no_channel_rule, quant=rule))
    else:
        _FUNCTIONS[key] = rule


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
for _f in (F.softmax, torch.softmax, "softmax"):
    register_quant_rule(_f, QuantRule.PROBABILITY)


def _stochastic_depth_rule() -> None:
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # torchvision is optional here
        return
    register_quant_rule(stochastic_depth, QuantRule.PASSTHROUGH)  # identity in eval mode


_stochastic_depth_rule()


def quant_rule(gm: fx.GraphModule, node: fx.Node) -> QuantRule:
    """The rule of one traced operation; an unknown module type is an error that says what to do."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        spec = layer_spec(module)
        if spec is not None:
            return spec.quant
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
        if rule in (QuantRule.WEIGHTED, QuantRule.FLOAT, QuantRule.PROBABILITY):
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
