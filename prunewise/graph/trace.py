"""Trace a model with torch.fx and attach the shape of every intermediate tensor."""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import operator
from math import prod
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.modules.batchnorm import _BatchNorm

from prunewise.errors import PrunewiseError, first_line
from prunewise.graph.reparam import check_no_hooks, plain_model
from prunewise.graph.shape_trace import SpatialTracer, meta_like, traced_size
from prunewise.layers.registry import is_leaf_layer

__all__ = [
    "batch_norms_as_modules",
    "call_args",
    "check_one_input",
    "node_shape",
    "propagate_shapes",
    "scope_hint",
    "trace",
]

_MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _LayerTracer(fx.Tracer):
    """fx's tracer, with every module of a registered layer type kept whole (a leaf)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf_layer(m) or super().is_leaf_module(m, module_qualified_name)


def _plain_leaves(gm: fx.GraphModule) -> bool:
    """Whether every called module of a graph is a leaf to fx itself (a torch.nn layer)."""
    tracer = fx.Tracer()
    return all(
        tracer.is_leaf_module(gm.get_submodule(str(n.target)), str(n.target))
        for n in gm.graph.nodes
        if n.op == "call_module"
    )


def scope_hint(model: nn.Module) -> str:
    """'; or prune a traceable part of it in place (scope=, --scope), e.g. one of A, B' for a
    model with parts that hold parameters, else ''."""
    parts = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    if not parts:
        return ""
    return "; or prune a traceable part of it in place (scope=, --scope), e.g. one of " + ", ".join(
        parts[:6]
    )


def check_one_input(model: nn.Module) -> None:
    """Refuse a model whose forward needs more than one argument: prunewise feeds it one batch
    of images. Raises PrunewiseError naming the arguments and what to do."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in params if p.kind in positional and p.default is p.empty]
    if len(required) > 1:
        raise PrunewiseError(
            f"{type(model).__name__}.forward takes {len(required)} inputs "
            f"({', '.join(required)}); prunewise runs a model on one batch of images: wrap it in "
            "a module whose forward(x) supplies the others, or prune the part that takes the "
            "images alone (scope=, --scope)"
        )


def trace(
    model: nn.Module, *, layers: bool = True, input_shape: tuple[int, ...] | None = None
) -> fx.GraphModule:
    """Return a torch.fx GraphModule for `model` (itself if it already is one).

    With `layers`, modules of a registered layer type (prunewise.layers) are leaves, so a
    subclass of a torch.nn layer that keeps its forward stays one call; without, only torch.nn
    layers are (fx's own rule: everything else is inlined into functional calls, what a
    checkpoint stores). A model whose weights carry pruning masks, weight/spectral norm hooks
    or parametrizations is traced from a copy with those made permanent
    (`prunewise.graph.reparam`): the graph then computes what the model computes, with plain
    weights. Any other forward hook is refused (PrunewiseError naming the module): the graph
    would drop it. A forward that branches on spatial sizes (timm's "same" padding) traces
    when `input_shape` (C, H, W) is given, specialised to that height and width
    (`prunewise.graph.shape_trace`). The graph is traced in eval mode (`_traced`) and returned
    in the model's mode.
    """
    if not isinstance(model, nn.Module):
        raise PrunewiseError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    check_one_input(model)
    model = plain_model(model)
    for name, module in model.named_modules():
        check_no_hooks(name, module)
    if isinstance(model, fx.GraphModule) and (layers or _plain_leaves(model)):
        return model
    was_training = model.training
    model.eval()  # the inference graph: see _traced
    try:
        gm = _traced(model, _LayerTracer() if layers else fx.Tracer(), input_shape)
    finally:
        model.train(was_training)
    batch_norms_as_modules(gm, model)
    return gm.train(was_training)


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training")


def _owner(node: object, attr: str) -> str | None:
    """The module path whose tensor `attr` a get_attr node reads, else None."""
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    owner, _, name = str(node.target).rpartition(".")
    return owner if name == attr and owner else None


def _trains_statistics(module: nn.Module, dims: int) -> bool:
    """Whether a BatchNorm subclass's own forward, in training mode, updates its running
    statistics (as timm's BatchNormAct2d does; one that passes training=False does not): run
    on a copy, on a small random batch."""
    probe = copy.deepcopy(module).train()
    before = probe.running_mean.clone()
    stats = module.running_mean
    x = torch.randn(
        4, module.num_features, *(3,) * (dims - 1), device=stats.device, dtype=stats.dtype
    )
    try:
        with torch.no_grad():
            probe(x)
    except Exception:  # a forward that needs other inputs: leave the call as traced
        return False
    return not torch.equal(before, probe.running_mean)


def batch_norms_as_modules(gm: fx.GraphModule, source: nn.Module) -> int:
    """Make each F.batch_norm call that an inlined BatchNorm subclass makes on its own weight,
    bias and running statistics (timm's BatchNormAct2d, whose forward adds its activation) a
    call of a torch.nn BatchNorm of the same name holding the same tensors (and the
    subclass's submodules, its activation); returns how many. Traced in eval mode, such a
    call had training=False fixed, so fine-tuning ran on frozen statistics, which can diverge
    (timm regnetx_002 at lr 0.01); the module follows the graph's mode as the subclass did.
    `source` is the model `gm` was traced from (the subclass's settings are read there)."""
    made = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not F.batch_norm:
            continue
        args = call_args(node, _BN_ARGS)
        owner = _owner(args.get("running_mean"), "running_mean")
        try:
            module = source.get_submodule(owner) if owner else None
        except AttributeError:  # not a module of the source (a rebuilt graph's container)
            continue
        cls = next((c for c in _NORMS if isinstance(module, c)), None)
        if cls is None or _owner(args.get("running_var"), "running_var") != owner:
            continue
        affine = [_owner(args.get(k), k) == owner for k in ("weight", "bias")]
        if affine != [module.affine] * 2 or args.get("training", False) is not False:
            continue
        if not _trains_statistics(module, _NORMS.index(cls) + 1):  # last: it runs the forward
            continue  # frozen by its own forward (a literal training=False): stays so
        bn = cls(module.num_features, module.eps, module.momentum, affine=module.affine)
        for name, param in module.named_parameters(recurse=False):
            setattr(bn, name, param)  # the same tensors: shared as every other module's are
        for name, buffer in module.named_buffers(recurse=False):
            persistent = name not in module._non_persistent_buffers_set
            bn.register_buffer(name, buffer, persistent=persistent)
        for name, child in gm.get_submodule(owner).named_children():
            bn.add_module(name, child)  # those the graph calls (the activation)
        parent, _, leaf = owner.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, bn.train(module.training))
        with gm.graph.inserting_before(node):
            node.replace_all_uses_with(gm.graph.call_module(owner, (args["input"],)))
        gm.graph.erase_node(node)
        made += 1
    if made:
        for node in list(gm.graph.nodes):
            if node.op == "get_attr" and not node.users:
                gm.graph.erase_node(node)
        gm.graph.lint()
        gm.recompile()
    return made


def _traced(
    model: nn.Module, tracer: fx.Tracer, input_shape: tuple[int, ...] | None
) -> fx.GraphModule:
    """The graph of `model`, traced in eval mode: what inlined code decides on `self.training`
    in Python (timm's BatchNormAct2d passes it to F.batch_norm, DropPath skips itself) is fixed
    in the graph at trace time, and a pruned, saved or deployed model must compute as at
    inference. Leaf modules (torch.nn's BatchNorm, Dropout) still follow the graph's mode, and
    `trace` makes such a BatchNorm subclass's call one again (`batch_norms_as_modules`)."""
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; the user needs the first line only
        if input_shape is not None:
            found = _trace_spatial(model, tracer, input_shape)
            if found is not None:
                return found
        first = first_line(exc)
        raise PrunewiseError(
            f"cannot trace {type(model).__name__} with torch.fx ({first[:200]}); prunewise "
            "needs a forward() that torch.fx can trace: no branch on tensor values, and sizes "
            "read from tensors passed as one tuple (torch.zeros((n, c, 1, 1)), x.new_zeros(n, "
            f"c, 1, 1)), not as separate arguments of a torch function{scope_hint(model)}"
        ) from exc
    name = model.__class__.__name__ if isinstance(model, nn.Module) else "GraphModule"
    return fx.GraphModule(tracer.root, graph, name)


def _trace_spatial(
    model: nn.Module, tracer: fx.Tracer, input_shape: tuple[int, ...]
) -> fx.GraphModule | None:
    """The graph of a forward that branches on spatial sizes, specialised to `input_shape`
    (prunewise.graph.shape_trace); None when that fails too."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    example = torch.empty((1, *input_shape), dtype=dtype, device="meta")
    spatial = SpatialTracer(example, tracer.is_leaf_module)
    try:
        graph = spatial.trace(model)
    except Exception:
        return None
    for node in reversed(list(graph.nodes)):  # size reads the specialised sizes left unused
        reads = node.target in (getattr, operator.getitem) or node.target in ("size", "dim")
        if not node.users and node.op in ("call_function", "call_method") and reads:
            graph.erase_node(node)
    x = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(x):
        checked = graph.call_function(traced_size, (x, tuple(input_shape[1:])))
    x.replace_all_uses_with(checked, delete_user_cb=lambda user: user is not checked)
    gm = fx.GraphModule(spatial.root, graph, model.__class__.__name__)
    gm.meta["specialised_to"] = tuple(input_shape)
    return gm


def _tensor_meta(t: torch.Tensor) -> TensorMetadata:
    """ShapeProp's TensorMetadata for a dense tensor, with C++ contiguity checks."""
    layout_ok = t.layout == torch.strided
    memory_format = None
    for fmt in _MEMORY_FORMATS if layout_ok else ():
        try:
            if t.is_contiguous(memory_format=fmt):
                memory_format = fmt
                break
        except RuntimeError:  # channels_last needs 4 dims, channels_last_3d 5
            continue
    stride = t.stride() if layout_ok else ()
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, stride, memory_format, False, {})


class _MetaShapes(fx.Interpreter):
    """Runs a GraphModule on meta tensors (shapes only, no arithmetic), recording shapes.

    Parameters stay where they are: each module call sees meta stand-ins for its own tensors.
    torch.nn's BatchNorm, convolution and linear layers are checked directly (BatchNorm's meta
    kernel is a slow Python decomposition).
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        found = False

        def describe(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _tensor_meta(obj)
            return obj

        described = fx.node.map_aggregate(result, describe)
        if found:
            n.meta["tensor_meta"] = described
        n.meta["type"] = type(result)
        return result

    def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
        value = super().get_attr(target, args, kwargs)
        if not isinstance(value, torch.Tensor):
            return value
        stand_in = meta_like(value)
        return stand_in.requires_grad_() if value.requires_grad else stand_in

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        module = self.fetch_attr(str(target))
        kind = type(module)
        if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
            x = args[0]
            if kind in _NORMS:
                return _batch_norm_shape(module, x)
            if kind in _CONVS:
                return module._conv_forward(x, meta_like(module.weight), meta_like(module.bias))
            if kind is nn.Linear:
                return F.linear(x, meta_like(module.weight), meta_like(module.bias))
        tensors = dict(module.named_parameters(remove_duplicate=False))
        tensors.update(module.named_buffers(remove_duplicate=False))
        if not tensors:
            return module(*args, **kwargs)
        stand_ins = {k: meta_like(v) for k, v in tensors.items()}
        return torch.func.functional_call(module, stand_ins, tuple(args), dict(kwargs))


def _batch_norm_shape(module: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm's output on the meta device, after the channel checks the real kernel makes."""
    module._check_input_dim(x)
    batch_statistics = module.training or module.running_mean is None
    if batch_statistics and x.shape[0] * prod(x.shape[2:]) == 1:
        raise ValueError(f"expected more than 1 value per channel when training, got {x.shape}")
    for t in (module.weight, module.bias, module.running_mean, module.running_var):
        if t is not None and t.numel() != x.shape[1]:
            raise RuntimeError(f"{x.shape[1]} channels reach a BatchNorm of {t.numel()}")
    return torch.empty(x.shape, dtype=x.dtype, device="meta")


class _Tracked(ShapeProp):
    """ShapeProp that remembers the node it is running (to name it when it fails)."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _run_on_zeros(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> _Tracked:
    """Exact fallback: one real forward pass of a zero example, recording shapes."""
    param = next(gm.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    example = torch.zeros((1, *input_shape), device=device, dtype=dtype)
    runner = _Tracked(gm)
    try:  # ShapeProp prints the traceback of a failing node: the caller words the error
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            runner.propagate(example)
    except Exception as exc:
        exc.prunewise_node = runner.current  # type: ignore[attr-defined]
        raise
    return runner


def _node_label(gm: fx.GraphModule, node: fx.Node | None) -> str:
    """'layer features.3 (Conv2d)' or 'operation view (view_1)'."""
    if node is None:
        return "the model"
    if node.op == "call_module":
        return f"layer {node.target} ({type(gm.get_submodule(str(node.target))).__name__})"
    target = getattr(node.target, "__name__", node.target)
    return f"operation {target} ({node.name})"


def propagate_shapes(
    gm: fx.GraphModule, input_shape: tuple[int, ...], *, after_surgery: bool = False
) -> None:
    """Record in node.meta the shape of every tensor for one example of `input_shape` (C, H, W).

    The pass runs on meta tensors (shapes only, no arithmetic, parameters untouched); shapes and
    dtypes are those of a real run, strides follow the meta kernels. If any operation cannot
    run on the meta device (no meta kernel, data-dependent output), the pass is redone as a
    real forward pass of one zero example, which also words the error if the shape is wrong.
    With `after_surgery` (a model prunewise resized), a failure names the layer or operation
    that does not fit and says it is prunewise's fault, not the input's.
    """
    if any(int(d) <= 0 for d in input_shape):
        raise PrunewiseError(f"input shape {tuple(input_shape)} has a non-positive dimension")
    was_training = gm.training
    gm.eval()
    try:
        param = next(gm.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        example = torch.empty((1, *input_shape), dtype=dtype, device="meta")
        try:
            with torch.no_grad():
                _MetaShapes(gm).run(example)
        except Exception:  # the exact pass below decides, and words the error
            _run_on_zeros(gm, tuple(input_shape))
    except PrunewiseError:
        raise
    except Exception as exc:
        cause = exc.__cause__ or exc  # ShapeProp wraps the operation's own error
        first = first_line(cause)
        if after_surgery:
            where = _node_label(gm, getattr(exc, "prunewise_node", None))
            raise PrunewiseError(
                f"surgery produced a model that does not run: {where} fails ({first}); this is "
                "a prunewise bug for this layer or operation, please report it"
            ) from exc
        raise PrunewiseError(
            f"input shape {tuple(input_shape)} does not fit the model ({first}); "
            "pass the (channels, height, width) the model was built for"
        ) from exc
    finally:
        gm.train(was_training)


def call_args(node: fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
    """The arguments of a call node by name: its positional ones named in order by `names`
    (the called function's parameters), then its keyword ones."""
    return dict(zip(names, node.args, strict=False)) | dict(node.kwargs)


def node_shape(node: fx.Node) -> tuple[int, ...] | None:
    """Shape of the tensor a node produces, or None if it produces no single tensor."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None
