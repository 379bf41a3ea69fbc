"""INT8 post-training quantization: fold BN, calibrate activations, fake-quantize the model.

`quantize` returns a `QuantizedModel`: a float model that computes exactly what an INT8 engine
computes (weights and biases on their integer grids, every activation fake-quantized), and the
`QuantSpec` (scales and zero points by name) that rebuilds it and drives the QDQ ONNX export.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn

from prunewise.errors import PrunewiseError
from prunewise.given import check_images, inference_copy
from prunewise.graph.trace import propagate_shapes
from prunewise.progress import progress_bar
from prunewise.quant.calibrate import Observer, choose_qparams
from prunewise.quant.config import Int8Config
from prunewise.quant.fold import fold_batchnorm
from prunewise.quant.qparams import (
    DTYPE_RANGES,
    QParams,
    bias_scale_floor,
    probability_qparams,
    weight_axis,
    weight_qparams,
)
from prunewise.quant.rules import QuantPoint, QuantRule, find_points, quant_rule

__all__ = [
    "QUANT_SPEC_FORMAT",
    "FakeQuant",
    "QuantSpec",
    "QuantizedModel",
    "apply_spec",
    "quantize",
]

QUANT_SPEC_FORMAT = "prunewise-int8/1"
_INT32 = (-(2**31), 2**31 - 1)


class FakeQuant(nn.Module):
    """Quantize and dequantize a tensor with fixed per-tensor parameters (exports as Q/DQ)."""

    def __init__(self, qparams: QParams) -> None:
        super().__init__()
        self.scale = float(qparams.scale)
        self.zero_point = int(qparams.zero_point)
        self.qmin, self.qmax = DTYPE_RANGES[qparams.dtype]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Round `x` to the int8 grid and back."""
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.qmin, self.qmax
        )

    def extra_repr(self) -> str:
        """Scale, zero point and code range."""
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}, [{self.qmin}, {self.qmax}]"


@dataclass(frozen=True)
class QuantSpec:
    """Everything that defines a quantized model, by name: JSON-ready and class-free."""

    activations: dict[str, QParams]  # quant point (node name) -> its parameters
    shared: dict[str, str]  # pass-through point -> the point whose parameters it reuses
    weights: dict[str, list[float]]  # layer name -> per-output-channel weight scales
    config: Int8Config

    def point_qparams(self, name: str) -> QParams:
        """Parameters of a point, following shared points to their source."""
        return self.activations[self.shared.get(name, name)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see `from_dict`)."""
        return {
            "format": QUANT_SPEC_FORMAT,
            "config": asdict(self.config),
            "activations": {k: v.to_dict() for k, v in self.activations.items()},
            "shared": dict(self.shared),
            "weights": {k: list(v) for k, v in self.weights.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        """Read what `to_dict` wrote; a wrong format is a clear error."""
        if not isinstance(data, dict) or data.get("format") != QUANT_SPEC_FORMAT:
            raise PrunewiseError(f"not a prunewise quantization file (format {QUANT_SPEC_FORMAT})")
        acts = {
            k: QParams(float(v["scale"]), int(v["zero_point"]), str(v["dtype"]))
            for k, v in data["activations"].items()
        }
        return cls(acts, dict(data["shared"]), dict(data["weights"]), Int8Config(**data["config"]))


@dataclass
class QuantizedModel:
    """A fake-quantized model (float arithmetic on int8 grids) and the spec that made it."""

    model: fx.GraphModule
    spec: QuantSpec
    input_shape: tuple[int, ...]


def _calibrate(
    gm: fx.GraphModule,
    points: list[QuantPoint],
    images: torch.Tensor,
    cfg: Int8Config,
    progress: bool,
) -> dict[str, QParams]:
    """Observe every calibrated point over `images` and choose its parameters."""
    probe = copy.deepcopy(gm)
    observers: dict[str, Observer] = {}
    for p in points:
        if p.own:
            observers[p.node] = Observer(cfg.histogram_bins)
    _insert_after(probe, observers)
    passes = ("range", "histogram") if cfg.needs_histogram else ("range",)
    device = next((t.device for t in gm.parameters()), torch.device("cpu"))
    batches = torch.split(images, 64)
    with torch.no_grad():
        for stage in passes:
            for obs in observers.values():
                obs.collect_histogram = stage == "histogram"
            for batch in progress_bar(batches, desc=f"calibrate ({stage})", show=progress):
                probe(batch.to(device))
    return {name: choose_qparams(obs, cfg) for name, obs in observers.items()}


def _insert_after(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> None:
    """Insert `modules[name]` after the node `name`; its users (except outputs) read the new one."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, module in modules.items():
        node = nodes[name]
        users = [u for u in node.users if u.op != "output"]
        if not users:
            continue
        target = f"fq_{name}"
        gm.add_submodule(target, module)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, (node,))
        for user in users:
            user.replace_input_with(node, new)
    gm.graph.lint()
    gm.recompile()


def _quantize_weights(gm: fx.GraphModule, spec: QuantSpec) -> None:
    """Put each weighted layer's weight and bias on their integer grids (in place)."""
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in spec.weights:
            continue
        layer = gm.get_submodule(node.target)
        scales = torch.tensor(spec.weights[node.target], dtype=torch.float32)
        w = layer.weight.detach()
        shape = [1] * w.dim()
        shape[weight_axis(layer)] = -1
        s = scales.to(w.device).view(shape)
        with torch.no_grad():
            qmax = spec.config.weight_qmax
            layer.weight.copy_(torch.clamp(torch.round(w / s), -qmax, qmax) * s)
            src = node.args[0]
            is_fq = src.op == "call_module" and src.target.startswith("fq_")
            in_name = src.args[0].name if is_fq else None
            if layer.bias is not None and in_name is not None:
                bias_scale = scales.to(w.device) * spec.point_qparams(in_name).scale
                q = torch.clamp(torch.round(layer.bias / bias_scale), *_INT32)
                layer.bias.copy_(q * bias_scale)


def apply_spec(folded: fx.GraphModule, spec: QuantSpec) -> fx.GraphModule:
    """The fake-quantized model of a BN-folded model under `spec` (a new module)."""
    gm = copy.deepcopy(folded)
    names = [*spec.activations, *spec.shared]
    known = {n.name for n in gm.graph.nodes}
    missing = [n for n in names if n not in known]
    if missing:
        raise PrunewiseError(
            f"the quantization file does not match this model (no tensor named {missing[0]!r}); "
            "quantize the model again"
        )
    _insert_after(gm, {n: FakeQuant(spec.point_qparams(n)) for n in names})
    _quantize_weights(gm, spec)
    return gm.eval()


def _int8_weights(layer: nn.Module) -> bool:
    """Whether the layer's weight is stored in INT8: all but a grouped transposed convolution,
    whose axis 1 holds out_channels / groups (it computes on float weights between INT8
    activations)."""
    return weight_axis(layer) == 0 or getattr(layer, "groups", 1) == 1


def _bias_floor(
    gm: fx.GraphModule, layer: str, activations: dict[str, QParams], shared: dict[str, str]
) -> torch.Tensor | None:
    """The weight-scale floor that keeps `layer`'s int32 bias exact (None: no quantized bias)."""
    module = gm.get_submodule(layer)
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == layer)
    src = node.args[0].name if node.args and isinstance(node.args[0], fx.Node) else None
    qparams = activations.get(shared.get(src, src)) if src is not None else None
    if module.bias is None or qparams is None:
        return None
    return bias_scale_floor(module.bias, qparams.scale)


def quantize(
    model: nn.Module, images: torch.Tensor, config: Int8Config, *, progress: bool = False
) -> QuantizedModel:
    """Fold BN, calibrate on `images` (N, C, H, W), and return the fake-quantized model (of a
    float32 copy: `model` is left as it is). Raises PrunewiseError for too few or unusable
    images (`prunewise.given.check_images`)."""
    config = Int8Config.given(config)
    model, images = inference_copy(model), check_images(images, what="calibration images").cpu()
    if images.shape[0] < config.calibration_images:
        have = images.shape[0] if images.dim() else 0
        raise PrunewiseError(
            f"calibration needs {config.calibration_images} images, got {have} (a tensor of "
            f"shape {tuple(images.shape)}: its first dimension counts the images); pass more "
            "images or fewer calibration images (Int8Config(calibration_images=N), "
            "--calibration-images N)"
        )
    images = images[: config.calibration_images]
    input_shape = tuple(int(d) for d in images.shape[1:])
    folded = fold_batchnorm(model, input_shape)
    propagate_shapes(folded, input_shape)
    points = find_points(folded, split_activations=config.power_of_two)
    weighted = [
        n.target
        for n in folded.graph.nodes
        if n.op == "call_module"
        and quant_rule(folded, n) is QuantRule.WEIGHTED
        and _int8_weights(folded.get_submodule(n.target))
    ]
    activations = _calibrate(folded, points, images, config, progress)
    for node in folded.graph.nodes:
        if node.name in activations and quant_rule(folded, node) is QuantRule.PROBABILITY:
            dtype = config.activation_dtype
            activations[node.name] = probability_qparams(dtype, power_of_two=config.power_of_two)
    shared = {p.node: p.source for p in points if not p.own}
    weights = {
        name: weight_qparams(
            folded.get_submodule(name).weight,
            power_of_two=config.power_of_two,
            qmax=config.weight_qmax,
            min_scale=_bias_floor(folded, name, activations, shared),
            axis=weight_axis(folded.get_submodule(name)),
        ).tolist()
        for name in weighted
    }
    spec = QuantSpec(activations, shared, weights, config)
    return QuantizedModel(apply_spec(folded, spec), spec, input_shape)
