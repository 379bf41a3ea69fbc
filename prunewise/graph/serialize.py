"""Describe a traced model as plain data, and rebuild it from that data alone.

The description lists the leaf modules (a torch.nn type and its constructor arguments, read
from the module's attributes) and the fx graph nodes (op, target, arguments). Rebuilding it
needs torch only: neither the class that defined the model nor pickle. Functions are resolved
by qualified name from an allow-list of namespaces.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import _get_qualified_name

from prunewise.errors import PrunewiseError

__all__ = ["ARCH_FORMAT", "describe", "rebuild"]

ARCH_FORMAT = "prunewise.fx/1"
_SKIP_INIT_ARGS = {"self", "device", "dtype"}
_ALLOWED_ROOTS = ("torch", "operator", "_operator", "math", "torchvision.ops")
_ALLOWED_BUILTINS = {"getattr", "len", "int", "float", "max", "min", "tuple", "list", "slice"}


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


def _decode(value: Any, nodes: dict[str, fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, body),) = value.items()
    if tag == "node":
        return nodes[body]
    if tag == "tuple":
        return tuple(_decode(v, nodes) for v in body)
    if tag == "dict":
        return {k: _decode(v, nodes) for k, v in body.items()}
    if tag == "slice":
        return slice(*(_decode(v, nodes) for v in body))
    if tag == "dtype":
        return getattr(torch, body)
    if tag == "device":
        return torch.device(body)
    if tag == "memory_format":
        return getattr(torch, body)
    if tag == "ellipsis":
        return Ellipsis
    raise PrunewiseError(f"unknown value tag {tag!r} in a model description")


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe_module(name: str, module: nn.Module) -> dict[str, Any]:
    cls = type(module)
    if not cls.__module__.startswith("torch.nn"):
        raise PrunewiseError(
            f"cannot describe module {name} of type {_type_name(cls)}: only torch.nn layers "
            "are leaves of a traced model; make it traceable or wrap it in torch.nn layers"
        )
    args: dict[str, Any] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in _SKIP_INIT_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "bias":
            args["bias"] = getattr(module, "bias", None) is not None
            continue
        if not hasattr(module, p.name):
            if p.default is inspect.Parameter.empty:
                raise PrunewiseError(
                    f"cannot describe {name} ({_type_name(cls)}): no attribute {p.name!r} "
                    "holds its constructor argument"
                )
            continue
        args[p.name] = _encode(getattr(module, p.name), f"module {name}")
    return {"type": _type_name(cls), "args": args}


def describe(gm: fx.GraphModule) -> dict[str, Any]:
    """Plain-data description (JSON-compatible) of a traced model's architecture."""
    modules: dict[str, Any] = {}
    nodes: list[dict[str, Any]] = []
    for node in gm.graph.nodes:
        target: Any = node.target
        if node.op == "call_module" and target not in modules:
            modules[target] = _describe_module(target, gm.get_submodule(target))
        if node.op == "call_function":
            target = _get_qualified_name(node.target)
        where = f"node {node.name}"
        nodes.append(
            {
                "name": node.name,
                "op": node.op,
                "target": target,
                "args": _encode(tuple(node.args), where),
                "kwargs": _encode(dict(node.kwargs), where),
            }
        )
    return {"format": ARCH_FORMAT, "modules": modules, "nodes": nodes}


def _resolve(qualified: str, allowed: tuple[str, ...]) -> Any:
    mod_name, _, attr = qualified.rpartition(".")
    if mod_name == "builtins":
        if attr not in _ALLOWED_BUILTINS:
            raise PrunewiseError(f"model description calls builtins.{attr}, which is not allowed")
        return getattr(builtins, attr)
    if not any(mod_name == r or mod_name.startswith(r + ".") for r in allowed):
        raise PrunewiseError(f"model description refers to {qualified}, outside {allowed}")
    obj: Any = None
    parts = mod_name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for p in [*parts[cut:], attr]:
            obj = getattr(obj, p, None)
        break
    if obj is None:
        raise PrunewiseError(f"model description refers to {qualified}, which does not exist")
    return obj


def rebuild(
    arch: dict[str, Any], constants: dict[str, torch.Tensor] | None = None
) -> fx.GraphModule:
    """Rebuild an (untrained) GraphModule from `describe`'s output; load weights afterwards.

    `constants` supplies the tensors that get_attr nodes read (from the saved state dict).
    """
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
        found = arch.get("format") if isinstance(arch, dict) else type(arch).__name__
        raise PrunewiseError(f"not a prunewise model description (format {found!r})")
    root: dict[str, Any] = {}
    for name, spec in arch["modules"].items():
        cls = _resolve(spec["type"], ("torch.nn",))
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise PrunewiseError(f"{spec['type']} is not a torch.nn module type")
        root[name] = cls(**{k: _decode(v, {}) for k, v in spec["args"].items()})
    graph = fx.Graph()
    made: dict[str, fx.Node] = {}
    for spec in arch["nodes"]:
        op, target = spec["op"], spec["target"]
        args = _decode(spec["args"], made)
        kwargs = _decode(spec["kwargs"], made)
        if op == "placeholder":
            node = graph.placeholder(target)
        elif op == "output":
            node = graph.output(args[0])
        elif op == "call_function":
            node = graph.call_function(_resolve(target, _ALLOWED_ROOTS), args, kwargs)
        elif op == "get_attr":
            if constants is None or target not in constants:
                raise PrunewiseError(f"model description reads tensor {target!r}, not saved")
            root[target] = constants[target].clone()
            node = graph.get_attr(target)
        else:
            node = graph.create_node(op, target, args, kwargs)
        made[spec["name"]] = node
    return fx.GraphModule(root, graph)
