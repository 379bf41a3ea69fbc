"""What a saved model description may name: explicit allow-lists of objects, looked up by name.

A prunewise checkpoint describes a traced model as plain data: each graph node names the
function, tensor method or attribute it uses, and each leaf module names its type. Loading
looks each name up in the tables below, which are built from the objects themselves: no module
is imported and no attribute path is followed, so a name that is not in a table (for example
`torch.os.system`, a path under `torch` that leads to `os`) is refused before anything runs.
Saving checks the same tables (`function_name`, `module_type_name`), so prunewise never writes
a file it would refuse. `torch.load(weights_only=True)` gives the same guarantee for the weights.

The tables hold:
- functions: torch's tensor operations (those that take part in `__torch_function__`, in
  `torch`, `torch.nn.functional`, `torch.linalg`, `torch.fft`, `torch.special`), torch's factory
  functions, the arithmetic of `operator` and `math`, a few builtins, and the functions that
  torchvision marks as leaves of a trace; plus what a program adds with `allow_function`;
- tensor methods: torch.Tensor's operations, without those that run a Python callable, register
  hooks, touch storage or leave the tensor world (`apply_`, `register_hook`, `numpy`, ...);
- attributes (read with `getattr`): shape, dtype, device and a few more plain facts;
- module types: torch.nn's layers (containers excluded), plus `allow_module_type`.
"""

from __future__ import annotations

import builtins
import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.fx.node import _get_qualified_name

from prunewise.graph.shape_trace import traced_size

__all__ = [
    "ALLOWED_ATTRIBUTES",
    "allow_function",
    "allow_module_type",
    "allowed_method",
    "function_by_name",
    "function_name",
    "module_type_by_name",
    "module_type_name",
]

ALLOWED_ATTRIBUTES = frozenset(
    {
        "shape",
        "dtype",
        "device",
        "ndim",
        "layout",
        "is_cuda",
        "is_cpu",
        "itemsize",
        "T",
        "mT",
        "H",
        "mH",
        "real",
        "imag",
    }
)
"""Attributes a description may read with getattr (facts about a tensor, never code)."""

_TORCH_NAMESPACES = (torch, torch.nn.functional, torch.linalg, torch.fft, torch.special)
_FACTORIES = (
    "arange",
    "as_tensor",
    "empty",
    "eye",
    "full",
    "linspace",
    "logspace",
    "ones",
    "scalar_tensor",
    "tensor",
    "zeros",
    "_assert",
)
_OPERATOR = (
    "abs",
    "add",
    "and_",
    "concat",
    "contains",
    "eq",
    "floordiv",
    "ge",
    "getitem",
    "gt",
    "iadd",
    "iand",
    "ifloordiv",
    "ilshift",
    "imatmul",
    "imod",
    "imul",
    "index",
    "inv",
    "invert",
    "ior",
    "ipow",
    "irshift",
    "isub",
    "itruediv",
    "ixor",
    "le",
    "lshift",
    "lt",
    "matmul",
    "mod",
    "mul",
    "ne",
    "neg",
    "not_",
    "or_",
    "pos",
    "pow",
    "rshift",
    "setitem",
    "sub",
    "truediv",
    "truth",
    "xor",
)
_BUILTINS = ("abs", "bool", "float", "getattr", "int", "len", "list", "max", "min", "range")
_BUILTINS += ("round", "slice", "sum", "tuple")
_MATH = (
    "ceil",
    "copysign",
    "cos",
    "exp",
    "fabs",
    "floor",
    "gcd",
    "isqrt",
    "lcm",
    "log",
    "log2",
    "log10",
    "pow",
    "prod",
    "sin",
    "sqrt",
    "tan",
    "trunc",
)
_TORCHVISION = (
    ("torchvision.ops.stochastic_depth", "stochastic_depth"),
    ("torchvision.models.swin_transformer", "_get_relative_position_bias"),
    ("torchvision.models.swin_transformer", "_patch_merging_pad"),
    ("torchvision.models.swin_transformer", "shifted_window_attention"),
)
_DENIED_METHODS = frozenset(
    {
        "apply_",
        "map_",
        "map2_",
        "backward",
        "register_hook",
        "register_post_accumulate_grad_hook",
        "retain_grad",
        "module_load",
        "numpy",
        "tolist",
        "storage",
        "untyped_storage",
        "storage_type",
        "share_memory_",
        "pin_memory",
        "record_stream",
        "set_",
        "resize_",
        "resize_as_",
        "resize_as_sparse_",
        "sparse_resize_",
        "sparse_resize_and_clear_",
        "data_ptr",
        "const_data_ptr",
    }
)
_FACTORY_METHODS = ("new_zeros", "new_ones", "new_full", "new_empty")
"""Tensor methods that make a tensor like another (torch lists them as not overridable)."""
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)

_extra_functions: dict[str, Callable[..., Any]] = {}
_extra_module_types: dict[str, type[nn.Module]] = {}


def _qualified(fn: Callable[..., Any]) -> str | None:
    try:
        return _get_qualified_name(fn)
    except Exception:  # lambdas, bound methods: fx cannot name them, so they never appear
        return None


def _torchvision_functions() -> list[Callable[..., Any]]:
    import importlib

    found = []
    for module_name, attr in _TORCHVISION:
        try:
            found.append(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError):  # torchvision absent or changed: not allowed then
            continue
    return found


@functools.cache
def _builtin_functions() -> dict[str, Callable[..., Any]]:
    candidates: list[Any] = []
    overridable = torch.overrides.get_overridable_functions()
    for namespace in _TORCH_NAMESPACES:
        candidates.extend(f for f in overridable.get(namespace, ()) if not isinstance(f, type))
    candidates.extend(getattr(torch, name) for name in _FACTORIES)
    candidates.extend(getattr(operator, name) for name in _OPERATOR)
    candidates.extend(getattr(builtins, name) for name in _BUILTINS)
    candidates.extend(getattr(math, name) for name in _MATH)
    candidates.extend(_torchvision_functions())
    candidates.append(traced_size)  # prunewise's own check of a specialised graph's input
    table: dict[str, Callable[..., Any]] = {}
    for fn in candidates:
        name = _qualified(fn)
        if name is not None and callable(fn):
            table.setdefault(name, fn)
    return table


@functools.cache
def _builtin_methods() -> frozenset[str]:
    names = set()
    for fn in torch.overrides.get_overridable_functions()[torch.Tensor]:
        name = getattr(fn, "__name__", None)
        if not isinstance(name, str) or name in _DENIED_METHODS or not callable(fn):
            continue
        dunder = name.startswith("__") and name.endswith("__")
        if name.startswith("_") and not dunder:
            continue
        names.add(name)
    names |= set(_FACTORY_METHODS)
    return frozenset(names - {"__reduce_ex__", "__setstate__", "__deepcopy__", "__format__"})


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.cache
def _builtin_module_types() -> dict[str, type[nn.Module]]:
    table = {}
    for attr in nn.modules.__all__:
        cls = getattr(nn.modules, attr, None)
        if (
            isinstance(cls, type)
            and issubclass(cls, nn.Module)
            and cls is not nn.Module
            and not issubclass(cls, _CONTAINERS)
        ):
            table[_type_name(cls)] = cls
    return table


def allow_function(fn: Callable[..., Any]) -> None:
    """Let descriptions call `fn` (a function your model's forward calls, e.g. one fx leaves
    whole with `torch.fx.wrap`). Call it before saving and in every process that loads.

    Raises TypeError when `fn` is not a named module-level function.
    """
    name = _qualified(fn) if callable(fn) else None
    if name is None or "<" in name:
        raise TypeError(f"allow_function needs a named module-level function, got {fn!r}")
    _extra_functions[name] = fn


def allow_module_type(cls: type[nn.Module]) -> None:
    """Let descriptions build leaf modules of type `cls` (constructed from plain-data arguments
    read off the module's attributes). Call it before saving and in every process that loads.

    Raises TypeError when `cls` is not an nn.Module subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"allow_module_type needs an nn.Module subclass, got {cls!r}")
    _extra_module_types[_type_name(cls)] = cls


def function_name(fn: Callable[..., Any]) -> str | None:
    """The name a description gives `fn`, or None when `fn` is not allowed."""
    name = _qualified(fn)
    if name is None:
        return None
    return name if function_by_name(name) is fn else None


def function_by_name(name: str) -> Callable[..., Any] | None:
    """The allowed function a description names, or None."""
    if not isinstance(name, str):
        return None
    return _extra_functions.get(name) or _builtin_functions().get(name)


def allowed_method(name: str) -> bool:
    """Whether a description may call tensor method `name` (e.g. 'view', 'size')."""
    return isinstance(name, str) and name in _builtin_methods()


def module_type_name(cls: type) -> str | None:
    """The name a description gives module type `cls`, or None when it is not allowed."""
    name = _type_name(cls)
    return name if module_type_by_name(name) is cls else None


def module_type_by_name(name: str) -> type[nn.Module] | None:
    """The allowed module type a description names, or None."""
    if not isinstance(name, str):
        return None
    return _extra_module_types.get(name) or _builtin_module_types().get(name)
