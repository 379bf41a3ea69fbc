"""ONNX export: the float model, and the INT8 model in QDQ form (QuantizeLinear/DequantizeLinear).

The float export is torch's ONNX exporter. The INT8 export exports the fake-quantized model
(each activation fake-quant becomes a Q/DQ pair), then stores every weight as int8 with its
per-channel scales and every bias as int32 with scale = input scale x weight scale, behind
DequantizeLinear nodes: the form ONNX Runtime fuses into QLinearConv / QGemm kernels.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import numbers
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from prunewise.errors import PrunewiseError, first_line
from prunewise.given import inference_copy
from prunewise.io import atomic_write_bytes
from prunewise.quant.quantize import FakeQuant, QuantizedModel, QuantSpec

if TYPE_CHECKING:  # onnx is imported when a graph is built, not with this module
    import onnx

__all__ = [
    "CLASS_NAMES_KEY",
    "DEFAULT_OPSET",
    "DYNAMO_LOWEST_OPSET",
    "LOWEST_OPSET",
    "export_float",
    "export_int8",
    "exporter_of",
    "int8_weight_layers",
    "label_outputs",
    "newest_opset",
    "onnx_bytes",
]

DEFAULT_OPSET = 18
LOWEST_OPSET = 13
"""The oldest opset written: per-channel QuantizeLinear / DequantizeLinear need 13."""
DYNAMO_LOWEST_OPSET = 18
"""The oldest opset torch.export's exporter writes; older ones are the TorchScript exporter's."""
_INPUT, _OUTPUT = "input", "logits"
_EXPORTER_KEY = "prunewise.exporter"


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...], *, opset: int = DEFAULT_OPSET):
    """Serialized ONNX of `model` (eval mode, CPU) for inputs (batch, *input_shape).

    Exported by torch's maintained exporter (`torch.onnx.export(..., dynamo=True)`, through
    torch.export and onnxscript); a model it rejects is exported by the TorchScript-based
    exporter instead, whose deprecation notices are not shown. `exporter_of` tells which one
    wrote a file. Raises PrunewiseError when neither can export the model.
    """
    return _onnx_model(model, input_shape, opset).SerializeToString()


def _onnx_model(model: nn.Module, input_shape: tuple[int, ...], opset: int) -> onnx.ModelProto:
    """The exported graph (dynamo, else TorchScript), before serialization."""
    if not input_shape or any(int(d) <= 0 for d in input_shape):
        raise PrunewiseError(
            f"cannot export without the input size (got {tuple(input_shape)}); "
            "pass it (input_shape=(C, H, W), --input-size C,H,W)"
        )
    opset = _check_opset(opset)
    model = inference_copy(model)
    # two images: torch.export specializes a dimension of size 1, so an example of one image
    # can pin the batch that the export is asked to keep dynamic (torchvision's ConvNeXt)
    example = torch.zeros((2, *input_shape))
    refused: BaseException = PrunewiseError(
        f"opset {opset} is older than torch.export's exporter writes ({DYNAMO_LOWEST_OPSET})"
    )
    try:
        if opset >= DYNAMO_LOWEST_OPSET:
            return _written_at(_dynamo_model(_exportable(model), example, opset), opset)
    except Exception as first:  # the fallback below says why both failed
        refused = first
    try:
        proto = _written_at(_torchscript_model(model, example, opset), opset)
    except Exception as exc:
        raise PrunewiseError(f"ONNX export failed: {first_line(exc)}") from refused
    if not any(isinstance(m, FakeQuant) for m in model.modules()):
        _check_traced(model, proto, input_shape, refused)
    return proto


@functools.cache
def newest_opset() -> int:
    """The newest opset the installed onnx writes and ONNX Runtime runs, INT8 included: the
    newest at which a per-channel QDQ convolution loads and runs (onnx may know opsets whose
    new operator versions ONNX Runtime has no kernel for yet)."""
    import onnx

    for opset in range(onnx.defs.onnx_opset_version(), DYNAMO_LOWEST_OPSET, -1):
        if _runs(_qdq_probe(opset)):
            return opset
    return DYNAMO_LOWEST_OPSET


def _qdq_probe(opset: int) -> onnx.ModelProto:
    """A 1-channel QDQ convolution at `opset`: what an INT8 file needs ONNX Runtime to run."""
    from onnx import TensorProto, helper, numpy_helper

    consts = {"s": np.float32(0.1), "z": np.uint8(0), "w": np.ones((1, 1, 3, 3), np.int8)}
    consts |= {"ws": np.array([0.1], np.float32), "wz": np.array([0], np.int8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["d", "wd"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "probe", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _runs(model: onnx.ModelProto) -> bool:
    import onnxruntime as ort

    try:
        cpu = ["CPUExecutionProvider"]
        session = ort.InferenceSession(model.SerializeToString(), providers=cpu)
        session.run(None, {"x": np.zeros((1, 1, 4, 4), np.float32)})
    except Exception:  # no kernel for an operator version: that opset does not run here
        return False
    return True


def _check_opset(opset: object) -> int:
    """`opset` as an int; PrunewiseError outside LOWEST_OPSET .. `newest_opset()`."""
    integral = isinstance(opset, numbers.Integral) and not isinstance(opset, bool | np.bool_)
    if integral and LOWEST_OPSET <= opset <= DEFAULT_OPSET:  # type: ignore[operator]
        return int(opset)  # type: ignore[arg-type]  # runs everywhere: no probe
    newest = newest_opset()
    if not (integral and LOWEST_OPSET <= opset <= newest):  # type: ignore[operator]
        raise PrunewiseError(
            f"opset must be an integer in [{LOWEST_OPSET}, {newest}] (per-channel INT8 needs "
            f"{LOWEST_OPSET}; {newest} is the newest the installed onnx and ONNX Runtime write "
            f"and run), got {opset!r}"
        )
    return int(opset)  # type: ignore[arg-type]


def _written_at(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`proto`, checked to be written at `opset` (an exporter may keep another when it cannot
    convert: torch.export's stays at 18 for older ones)."""
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written != opset:
        raise PrunewiseError(f"the exporter wrote opset {written}, not the {opset} asked for")
    return proto


def _close(want: np.ndarray, got: np.ndarray) -> bool:
    """ONNX Runtime's output `got` is PyTorch's `want` up to float rounding."""
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return want.shape == got.shape and bool(np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale))


def _check_traced(
    model: nn.Module, proto: onnx.ModelProto, input_shape: tuple[int, ...], why: BaseException
) -> None:
    """Raise PrunewiseError when the TorchScript exporter's graph (a trace of one example,
    which freezes every branch the forward takes on tensor values) computes other outputs
    than the model on random images, a check the maintained exporter does not need (it
    refuses such branches: `why`)."""
    import onnxruntime as ort
    from torch.utils._pytree import tree_leaves

    seeded = torch.Generator().manual_seed(0)
    shape = (2, *input_shape)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in (torch.randn(shape, generator=seeded), torch.rand(shape, generator=seeded)):
        with torch.no_grad():
            want = [t.numpy() for t in tree_leaves(model(x)) if isinstance(t, torch.Tensor)]
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        if not all(_close(a, b) for a, b in zip(want, got, strict=False)):
            raise PrunewiseError(
                f"ONNX export failed: the TorchScript exporter wrote it ({first_line(why)}) "
                "and its trace computes other outputs than the model on "
                "random images (a branch on tensor values is frozen at the traced example); "
                "remove the branch from forward()"
            )


class _QDQ(nn.Module):
    """A FakeQuant as torch's decomposed quantize / dequantize pair, the form torch.export keeps
    and the ONNX exporter writes as QuantizeLinear / DequantizeLinear."""

    def __init__(self, fq: FakeQuant) -> None:
        super().__init__()
        self.scale, self.zero_point = fq.scale, fq.zero_point
        self.qmin, self.qmax = fq.qmin, fq.qmax
        self.dtype = torch.int8 if fq.qmin < 0 else torch.uint8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize to the integer grid and dequantize."""
        ops = torch.ops.quantized_decomposed
        args = (self.scale, self.zero_point, self.qmin, self.qmax, self.dtype)
        return ops.dequantize_per_tensor(ops.quantize_per_tensor(x, *args), *args)


def _exportable(model: nn.Module) -> nn.Module:
    """`model`, or a copy whose FakeQuant modules are `_QDQ` (torch.export cannot trace
    torch.fake_quantize_per_tensor_affine)."""
    if not any(isinstance(m, FakeQuant) for m in model.modules()):
        return model
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed)

    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, FakeQuant):
            parent, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, attr, _QDQ(module))
    return out


_TORCH_LOGS = (
    "torch._guards",
    "torch._dynamo",
    "torch.export",
    "torch.fx.experimental",
    "torch.onnx",
)
"""Loggers of torch's export that write errors of their own (a failed guard, a graph break)
to stderr even when the exception they go with is caught: prunewise says what failed."""


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Raise the loggers `names` to CRITICAL for the block, then restore their levels."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _dynamo_model(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    """torch.export + onnxscript (batch dimension dynamic), marked as written by it."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1], _quiet(_TORCH_LOGS):  # a graph dump
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[_INPUT],
            output_names=[_OUTPUT],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's per-node source notes: most of the bytes
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.helper.set_model_props(proto, {_EXPORTER_KEY: "dynamo"})
    return proto


def _torchscript_model(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    """The TorchScript-based exporter (deprecated by torch): the fallback."""
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[_INPUT],
            output_names=[_OUTPUT],
            dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, {_EXPORTER_KEY: "torchscript"})
    return proto


def exporter_of(model: onnx.ModelProto) -> str | None:
    """'dynamo' or 'torchscript': which exporter wrote a prunewise ONNX file (None if unknown)."""
    return next((p.value for p in model.metadata_props if p.key == _EXPORTER_KEY), None)


CLASS_NAMES_KEY = "prunewise.class_names"
"""ONNX metadata key of the class names, a JSON list: output index i is class names[i]."""


def label_outputs(path: str | Path, class_names: Sequence[str]) -> Path:
    """Record in the ONNX file at `path` which class each output index is (metadata
    CLASS_NAMES_KEY, a JSON list; onnxruntime: session.get_modelmeta().custom_metadata_map)."""
    import onnx

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props[CLASS_NAMES_KEY] = json.dumps(list(class_names))
    onnx.helper.set_model_props(proto, props)
    return atomic_write_bytes(path, proto.SerializeToString())


def export_float(
    model: nn.Module, path: str | Path, input_shape: tuple[int, ...], *, opset: int = DEFAULT_OPSET
) -> Path:
    """Write the float ONNX model of `model`; returns the path."""
    return atomic_write_bytes(path, onnx_bytes(model, input_shape, opset=opset))


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _materialize_identities(graph: onnx.GraphProto) -> None:
    """Replace Identity(initializer) (the exporter's de-duplication) by named copies."""
    import onnx

    inits = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            named = onnx.TensorProto()
            named.CopyFrom(inits[node.input[0]])
            named.name = node.output[0]
            graph.initializer.append(named)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _dq(
    name: str, codes: np.ndarray, scale: np.ndarray, axis: int
) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    from onnx import helper, numpy_helper

    zero = np.zeros_like(scale, dtype=codes.dtype)
    inits = [
        numpy_helper.from_array(codes, f"{name}_quantized"),
        numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
        numpy_helper.from_array(zero, f"{name}_zero_point"),
    ]
    node = helper.make_node(
        "DequantizeLinear",
        [i.name for i in inits],
        [f"{name}_dequantized"],
        name=f"{name}_DequantizeLinear",
        axis=axis,
    )
    return inits, node


def _weight_axis(node: onnx.NodeProto) -> int:
    """The axis of a weight's output channels: 0 (Conv; Gemm with transB), 1 (Gemm; MatMul,
    whose weight is (in, out); ConvTranspose, (in, out, k...))."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1 if node.op_type in ("MatMul", "ConvTranspose") else 0


def _matmul_key(value: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    return tuple(value.shape), np.ascontiguousarray(value, dtype=np.float32).tobytes()


def _layer_of(
    node: onnx.NodeProto, consts: dict[str, np.ndarray], transposed: dict[tuple, str]
) -> str:
    """The quantized layer whose weight `node` reads ("" for none): a Conv / Gemm reads it by
    name; a MatMul (a linear layer on more than two dimensions: tokens, channels-last maps)
    reads its transpose, which the exporter folded into an unnamed constant, found by value."""
    if len(node.input) < 2:
        return ""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return node.input[1].removesuffix(".weight")
    if node.op_type == "MatMul" and node.input[1] in consts:
        return transposed.get(_matmul_key(consts[node.input[1]]), "")
    return ""


def _quantize_layers(
    model: onnx.ModelProto, spec: QuantSpec, linear: dict[str, np.ndarray] | None = None
) -> None:
    """Store conv/ConvTranspose/Gemm/MatMul weights as int8 and biases as int32, each behind a
    DequantizeLinear. `linear`: the (out, in) weights of the linear layers by name, which a
    MatMul reads transposed."""
    graph = model.graph
    _materialize_identities(graph)
    consts = _constants(graph)
    transposed = {_matmul_key(w.T): name for name, w in (linear or {}).items() if w.ndim == 2}
    producer = {o: n for n in graph.node for o in n.output}
    new_nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    done: dict[str, str] = {}  # a weight read by several nodes (a layer called twice): once
    for node in graph.node:
        layer = _layer_of(node, consts, transposed)
        if layer not in spec.weights:
            new_nodes.append(node)
            continue
        scales = np.asarray(spec.weights[layer], dtype=np.float64)
        if node.input[1] not in done:
            axis = _weight_axis(node)
            w = consts[node.input[1]].astype(np.float64)
            shape = [1] * w.ndim
            shape[axis] = -1
            qmax = spec.config.weight_qmax
            codes = np.clip(np.rint(w / scales.reshape(shape)), -qmax, qmax).astype(np.int8)
            inits, dq = _dq(node.input[1], codes, scales, axis)
            graph.initializer.extend(inits)
            new_nodes.append(dq)
            replaced.add(node.input[1])
            done[node.input[1]] = dq.output[0]
        node.input[1] = done[node.input[1]]
        src = producer.get(node.input[0])
        has_bias = node.op_type != "MatMul" and len(node.input) > 2 and bool(node.input[2])
        if (
            has_bias
            and src is not None
            and src.op_type == "DequantizeLinear"
            and src.input[1] in consts
        ):
            bias_scale = scales * float(consts[src.input[1]].reshape(-1)[0])
            b = consts[node.input[2]].astype(np.float64)
            bias = np.clip(np.rint(b / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
            name = (
                node.input[2] if node.input[2] not in replaced else f"{node.input[2]}_{node.name}"
            )
            inits, dq = _dq(name, bias, bias_scale, 0)
            graph.initializer.extend(inits)
            new_nodes.append(dq)
            replaced.add(node.input[2])
            node.input[2] = dq.output[0]
        new_nodes.append(node)
    used = {i for n in new_nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(new_nodes)


def int8_weight_layers(model: onnx.ModelProto) -> int:
    """How many Conv/ConvTranspose/Gemm/MatMul nodes of an ONNX model read int8 weights through
    DequantizeLinear."""
    import onnx

    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            dq = producer.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                count += inits[dq.input[0]].data_type == onnx.TensorProto.INT8
    return count


def export_int8(qmodel: QuantizedModel, path: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write prunewise's INT8 QDQ ONNX file of a quantized model (what `prunewise.quant.quantize`
    returns); returns the path. Raises PrunewiseError for anything else, and for a model
    whose Int8Config names another backend (`export_model` writes any backend's file)."""
    import onnx

    if not isinstance(qmodel, QuantizedModel):
        raise PrunewiseError(
            f"export_int8 needs the QuantizedModel that prunewise.quant.quantize returns, got "
            f"{type(qmodel).__name__}; for a float model use export_float"
        )
    if qmodel.spec.config.backend != "prunewise":
        raise PrunewiseError(
            f"export_int8 writes prunewise's own QDQ file, but this model's Int8Config asks for "
            f"the {qmodel.spec.config.backend!r} backend, which quantizes the float ONNX file: "
            "use prunewise.export.export_model(model, path, input_shape, int8=config, "
            "calibration=images), or Int8Config(backend='prunewise')"
        )

    model = _onnx_model(qmodel.model, qmodel.input_shape, opset)
    linear = {
        name: m.weight.detach().cpu().numpy()
        for name, m in qmodel.model.named_modules()
        if isinstance(m, nn.Linear) and name in qmodel.spec.weights
    }
    _quantize_layers(model, qmodel.spec, linear)
    onnx.checker.check_model(model)
    return atomic_write_bytes(path, model.SerializeToString())
