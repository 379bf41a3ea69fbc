"""Describe a traced model as plain data, and rebuild it from that data alone.

The description lists the leaf modules (an allowed module type and its constructor arguments,
read from the module's attributes) and the fx graph nodes (op, target, arguments). Rebuilding
needs neither the class that defined the model nor pickle, and calls nothing outside the
allow-lists of `prunewise.graph.allowlist`: every name is checked before the graph is built, on
save (`describe`) and on load (`rebuild`), so a crafted file is refused before any of it runs.
"""

from __future__ import annotations

import builtins
import inspect
import keyword
import re
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import _get_qualified_name

from prunewise.errors import PrunewiseError
from prunewise.graph.allowlist import (
    ALLOWED_ATTRIBUTES,
    allowed_method,
    function_by_name,
    function_name,
    module_type_by_name,
    module_type_name,
)
from prunewise.graph.reparam import check_no_hooks

__all__ = ["ARCH_FORMAT", "describe", "rebuild"]

ARCH_FORMAT = "prunewise.fx/1"
_SKIP_INIT_ARGS = {"self", "device", "dtype"}
_OPS = ("placeholder", "get_attr", "call_module", "call_function", "call_method", "output")
# constructor arguments that a layer keeps under another attribute: type -> argument -> reader
_ARGUMENT_READERS: dict[type, dict[str, Any]] = {
    nn.MultiheadAttention: {
        "bias": lambda m: m.in_proj_bias is not None,
        "add_bias_kv": lambda m: m.bias_k is not None,
    },
}
_HOW_TO_ALLOW = (
    "a checkpoint may only call torch tensor operations; keep other code out of forward() or "
    "allow it with prunewise.graph.allow_function / allow_module_type in every process that "
    "saves or loads"
)


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, where) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(v, where) for v in (value.start, value.stop, value.step)]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if value is Ellipsis:
        return {"ellipsis": True}
    raise PrunewiseError(f"cannot describe {type(value).__name__} value {value!r} in {where}")


def _torch_constant(name: Any, kind: type, tag: str) -> Any:
    value = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(value, kind):
        raise PrunewiseError(f"model description has {tag} {name!r}, which torch does not know")
    return value


def _decode(value: Any, nodes: dict[str, fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise PrunewiseError(f"model description holds a malformed value {value!r}")
    ((tag, body),) = value.items()
    if tag == "node":
        if body not in nodes:
            raise PrunewiseError(f"model description uses node {body!r} before defining it")
        return nodes[body]
    if tag == "tuple":
        return tuple(_decode(v, nodes) for v in body)
    if tag == "dict":
        return {k: _decode(v, nodes) for k, v in body.items()}
    if tag == "slice":
        return slice(*(_decode(v, nodes) for v in body))
    if tag == "dtype":
        return _torch_constant(body, torch.dtype, "dtype")
    if tag == "device":
        return torch.device(body)
    if tag == "memory_format":
        return _torch_constant(body, torch.memory_format, "memory format")
    if tag == "ellipsis":
        return Ellipsis
    raise PrunewiseError(f"unknown value tag {tag!r} in a model description")


def _describe_module(name: str, module: nn.Module) -> dict[str, Any]:
    cls = type(module)
    type_name = module_type_name(cls)
    if type_name is None:
        raise PrunewiseError(
            f"cannot describe module {name} of type {cls.__module__}.{cls.__qualname__}: "
            f"it is not a torch.nn layer; {_HOW_TO_ALLOW}"
        )
    check_no_hooks(name, module)
    readers = _ARGUMENT_READERS.get(cls, {})
    args: dict[str, Any] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in _SKIP_INIT_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in readers:
            args[p.name] = readers[p.name](module)
            continue
        if p.name == "bias":
            args["bias"] = getattr(module, "bias", None) is not None
            continue
        if not hasattr(module, p.name):
            if p.default is inspect.Parameter.empty:
                raise PrunewiseError(
                    f"cannot describe {name} ({type_name}): no attribute {p.name!r} "
                    "holds its constructor argument"
                )
            continue
        args[p.name] = _encode(getattr(module, p.name), f"module {name}")
    return {"type": type_name, "args": args}


def _function_target(node: fx.Node) -> str:
    name = function_name(node.target)
    if name is None:
        try:
            shown = _get_qualified_name(node.target)
        except Exception:  # lambdas and bound methods have no qualified name
            shown = repr(node.target)
        raise PrunewiseError(f"cannot describe node {node.name}: it calls {shown}; {_HOW_TO_ALLOW}")
    return name


def describe(gm: fx.GraphModule) -> dict[str, Any]:
    """Plain-data description (JSON-compatible) of a traced model's architecture.

    Raises PrunewiseError when a node calls a function, method or module type outside the
    allow-lists: such a model could not be loaded back (`rebuild` refuses the same names).
    """
    modules: dict[str, Any] = {}
    nodes: list[dict[str, Any]] = []
    params = dict(gm.named_parameters())
    buffers = dict(gm.named_buffers())
    tensors: dict[str, str] = {}
    for node in gm.graph.nodes:
        target: Any = node.target
        if node.op == "call_module" and target not in modules:
            modules[target] = _describe_module(target, gm.get_submodule(target))
        if node.op == "get_attr":
            tensors[target] = (
                "parameter" if target in params else "buffer" if target in buffers else "constant"
            )
        if node.op == "call_function":
            target = _function_target(node)
        where = f"node {node.name}"
        spec = {
            "name": node.name,
            "op": node.op,
            "target": target,
            "args": _encode(tuple(node.args), where),
            "kwargs": _encode(dict(node.kwargs), where),
        }
        _check_node(spec, node.args, set(modules))
        nodes.append(spec)
    return {"format": ARCH_FORMAT, "modules": modules, "nodes": nodes, "tensors": tensors}


def _check_node(spec: dict[str, Any], args: Any, modules: set[str]) -> None:
    """Refuse a node that calls or reads anything outside the allow-lists (names it)."""
    op, target, name = spec.get("op"), spec.get("target"), spec.get("name")
    if op not in _OPS or not isinstance(name, str):
        raise PrunewiseError(f"model description node {name!r} has unknown op {op!r}")
    if op in ("placeholder", "get_attr", "call_module", "call_method") and not isinstance(
        target, str
    ):
        raise PrunewiseError(f"model description node {name!r} has a malformed target")
    if op in ("get_attr", "call_module"):
        _check_path(target)
    if op == "placeholder" and not _identifier(target):
        raise PrunewiseError(f"model description node {name!r} has input {target!r}; refused")
    if op == "call_module" and target not in modules:
        raise PrunewiseError(f"model description node {name!r} calls undescribed module {target}")
    if op == "call_function":
        fn = function_by_name(target)
        if fn is None:
            raise PrunewiseError(
                f"model description node {name!r} calls {target}, which is not an allowed "
                f"operation; refused (nothing was run); {_HOW_TO_ALLOW}"
            )
        if fn is builtins.getattr:
            attr = args[1] if isinstance(args, tuple | list) and len(args) == 2 else None
            if attr not in ALLOWED_ATTRIBUTES:
                raise PrunewiseError(
                    f"model description node {name!r} reads attribute {attr!r}; only "
                    f"{', '.join(sorted(ALLOWED_ATTRIBUTES))} may be read; refused"
                )
    if op == "call_method":
        if not allowed_method(target):
            raise PrunewiseError(
                f"model description node {name!r} calls method {target!r}, which is not an "
                f"allowed tensor operation; refused (nothing was run); {_HOW_TO_ALLOW}"
            )
        if not (isinstance(args, tuple | list) and args and isinstance(args[0], fx.Node)):
            raise PrunewiseError(
                f"model description node {name!r} calls method {target!r} on a constant; refused"
            )


_NAME_PART = re.compile(r"[A-Za-z0-9_-]+")


def _check_path(path: str) -> None:
    """A module or tensor name: parts of letters, digits, '_' and '-' joined by dots, none a
    dunder. torch.fx writes these names into the Python source of the rebuilt forward, so
    nothing else (a quote, a bracket) may reach it."""
    parts = path.split(".")
    if not all(_NAME_PART.fullmatch(p) and not p.startswith("__") for p in parts):
        raise PrunewiseError(f"model description names module or tensor {path!r}; refused")


def _identifier(name: object) -> bool:
    """A plain Python name (no keyword, no dunder): what fx writes as an argument name."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not keyword.iskeyword(name)
        and not name.startswith("__")
    )


def _build_modules(arch: dict[str, Any]) -> dict[str, nn.Module]:
    modules = arch.get("modules")
    if not isinstance(modules, dict):
        raise PrunewiseError("model description has no module table")
    root: dict[str, nn.Module] = {}
    for name, spec in modules.items():
        _check_path(name)
        type_name = spec.get("type") if isinstance(spec, dict) else None
        cls = module_type_by_name(type_name)
        if cls is None:
            raise PrunewiseError(
                f"model description builds module {name} of type {type_name!r}, which is not "
                f"an allowed layer type; refused (nothing was run); {_HOW_TO_ALLOW}"
            )
        args = spec.get("args")
        if not isinstance(args, dict):
            raise PrunewiseError(f"model description of module {name} has no arguments table")
        if {"device", "dtype"} & set(args):  # describe never writes them: built on meta
            raise PrunewiseError(f"model description of module {name} sets its device; refused")
        root[name] = _shapes_only(cls, {k: _decode(v, {}) for k, v in args.items()})
    return root


def _shapes_only(cls: type[nn.Module], args: dict[str, Any]) -> nn.Module:
    """`cls(**args)` with its tensors on the meta device (the weights loaded after replace
    them): a description cannot make the loader allocate what its sizes say before the saved
    tensors are checked against them. A type whose constructor computes with tensor values is
    built on the CPU."""
    try:
        with torch.device("meta"):
            return cls(**args)
    except Exception:  # a constructor that reads tensor values: built for real below
        return cls(**args)


def rebuild(
    arch: dict[str, Any], constants: dict[str, torch.Tensor] | None = None
) -> fx.GraphModule:
    """Rebuild a GraphModule from `describe`'s output, its layers' own tensors on the meta
    device (nothing allocated): load the weights afterwards with
    `load_state_dict(state, strict=True, assign=True)`.

    `constants` supplies the tensors that get_attr nodes read (the saved state dict and the
    traced constants); the description says which are parameters and buffers.
    Every node is checked against the allow-lists before the graph is built; anything else
    raises PrunewiseError naming it, and nothing of the description has run.
    """
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
        found = arch.get("format") if isinstance(arch, dict) else type(arch).__name__
        raise PrunewiseError(f"not a prunewise model description (format {found!r})")
    specs = arch.get("nodes")
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise PrunewiseError("model description has no node list")
    root: dict[str, Any] = dict(_build_modules(arch))
    modules = set(root)
    kinds = arch.get("tensors") or {}
    if not isinstance(kinds, dict):
        raise PrunewiseError("model description has a malformed tensor table")
    buffers: dict[str, torch.Tensor] = {}
    graph = fx.Graph()
    made: dict[str, fx.Node] = {}
    for spec in specs:
        args = _decode(spec.get("args", {"tuple": []}), made)
        kwargs = _decode(spec.get("kwargs", {"dict": {}}), made)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict) or "name" not in spec:
            raise PrunewiseError(f"model description node {spec.get('name')!r} is malformed")
        _check_node(spec, args, modules)
        bad = [k for k in kwargs if not _identifier(k)]  # fx writes them as `name = value`
        if bad:
            raise PrunewiseError(
                f"model description node {spec['name']!r} has keyword {bad[0]!r}; refused"
            )
        op, target = spec["op"], spec["target"]
        if op == "placeholder":
            node = graph.placeholder(target)
        elif op == "output":
            node = graph.output(args[0])
        elif op == "call_function":
            node = graph.call_function(function_by_name(target), args, kwargs)
        elif op == "get_attr":
            if constants is None or target not in constants:
                raise PrunewiseError(f"model description reads tensor {target!r}, not saved")
            value = constants[target].clone()
            kind = kinds.get(target, "constant")
            root[target] = nn.Parameter(value) if kind == "parameter" else value
            if kind == "buffer":
                buffers[target] = value
            node = graph.get_attr(target)
        else:
            node = graph.create_node(op, target, args, kwargs)
        made[spec["name"]] = node
    gm = fx.GraphModule(root, graph)
    for target, value in buffers.items():  # fx sets plain attributes; a buffer is registered
        owner, _, leaf = target.rpartition(".")
        module = gm.get_submodule(owner)
        delattr(module, leaf)
        module.register_buffer(leaf, value)
    return gm
