"""Reading the tensors of a pickled checkpoint without running any of its code.

`torch.load(weights_only=True)` refuses a file that names any class it does not know: a whole
model saved with `torch.save(model)`, and the training checkpoints of most tools, which keep
their state dict beside an `argparse.Namespace` (timm's `train.py`), a NumPy scalar (a best
accuracy), hyper-parameters (PyTorch Lightning) or a pickled model (Ultralytics). Unpickling
them the usual way would run code named by the file.

`load_without_code` reads such a file with torch's own loader and an unpickler that builds the
classes on torch's weights-only allow-list (tensors, parameters, storages, dtypes, `OrderedDict`)
and turns every other class or function the file names into an inert `Stub` that records its
name, arguments and state and is never called. Pickle runs code only through the classes and
functions it looks up by name, so nothing of the file's runs. `module_state` then rebuilds
`state_dict()` from a pickled `nn.Module` (its `_parameters`, persistent `_buffers` and
`_modules`, in the order torch's `state_dict` walks them).
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import _weights_only_unpickler

from prunewise.torchfile import check_torch_file

__all__ = ["Stub", "is_module", "load_without_code", "module_state"]


class Stub:
    """An object of a class the file names but which is not built: `qualname` is the class
    (or function) named in the file, `args` what it was called with, `state` what pickle
    would have given its `__setstate__`, `items` and `elements` what it would have stored."""

    qualname = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        stub = object.__new__(cls)
        stub.__dict__.update(args=args, state=None, items={}, elements=[])
        return stub

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Stub:  # a stub that pickle calls
        return type(self)(*args, **kwargs)

    def __setstate__(self, state: object) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: object, value: object) -> None:
        self.items[key] = value

    def append(self, value: object) -> None:
        self.elements.append(value)

    def extend(self, values: list[object]) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"Stub({self.qualname})"


def _stub_class(qualname: str) -> type[Stub]:
    return type(qualname.rpartition(".")[2] or "Stub", (Stub,), {"qualname": qualname})


class _Unpickler(pickle._Unpickler):  # pure Python: a memo index cannot make it allocate
    """Builds torch's weights-only globals; every other name becomes a `Stub` class."""

    _allowed: dict[str, object] | None = None

    def __init__(self, file: BinaryIO, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        if _Unpickler._allowed is None:
            _Unpickler._allowed = dict(_weights_only_unpickler._get_allowed_globals())
        self._stubs: dict[str, type[Stub]] = {}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (protocol < 3)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        allowed = self._allowed or {}
        if qualname in allowed:
            return allowed[qualname]
        if qualname not in self._stubs:
            self._stubs[qualname] = _stub_class(qualname)
        return self._stubs[qualname]


def _load(file: BinaryIO, **kwargs: Any) -> object:
    return _Unpickler(file, **kwargs).load()


_PICKLE_MODULE = types.ModuleType("prunewise_code_free_pickle")
_PICKLE_MODULE.Unpickler = _Unpickler  # type: ignore[attr-defined]
_PICKLE_MODULE.load = _load  # type: ignore[attr-defined]


def load_without_code(path: str | Path) -> object:
    """What `torch.load(path)` would return, on the CPU, with every class or function outside
    torch's weights-only allow-list replaced by a `Stub` (module docstring). Raises what
    `torch.load` raises for a file it cannot read, and PrunewiseError for one that would make
    the loader allocate beyond its size (prunewise.torchfile.check_torch_file)."""
    check_torch_file(path)
    return torch.load(
        Path(path), map_location="cpu", weights_only=False, pickle_module=_PICKLE_MODULE
    )


def is_module(obj: object) -> bool:
    """Whether `obj` is a pickled `nn.Module`: a stub whose state holds `_parameters` and
    `_modules`."""
    state = obj.state if isinstance(obj, Stub) else None
    return isinstance(state, dict) and "_parameters" in state and "_modules" in state


def _collect(stub: Stub, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = stub.state
    for name, value in (state.get("_parameters") or {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
    transient = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if isinstance(value, torch.Tensor) and name not in transient:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if is_module(child):
            _collect(child, f"{prefix}{name}.", out)


def module_state(obj: object) -> dict[str, torch.Tensor] | None:
    """The `state_dict()` of a pickled `nn.Module` read by `load_without_code`, or None when
    `obj` is not one (or holds no tensor)."""
    if not is_module(obj):
        return None
    out: dict[str, torch.Tensor] = {}
    _collect(obj, "", out)  # type: ignore[arg-type]
    return out or None
