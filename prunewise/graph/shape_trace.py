"""Tracing a forward that branches on spatial sizes, specialised to one input size.

torch.fx cannot trace `if x.shape[-1] < k:` or `max(ceil(h / s) ... - h, 0)` ("same"
padding computed from the input, as timm's Conv2dSame, pooling and attention blocks do): the
sizes are symbolic. Their answer only depends on the input's height and width, which a channel
graph fixes anyway (`build_channel_graph(model, (C, H, W))`). This tracer runs every traced
operation on meta tensors as it records it, and answers a tensor's spatial sizes (every
dimension after the first two) with the numbers of the example; the batch and channel sizes
stay symbolic, so the graph still runs on any batch and follows pruned channels. The resulting
graph is correct for inputs of that height and width; prunewise uses it only when fx's own
tracing fails, and its input passes through `traced_size`, which refuses any other size.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.stateless import _reparametrize_module

from prunewise.errors import PrunewiseError

__all__ = ["SpatialTracer", "meta_like", "traced_size"]


def traced_size(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """`x` itself, after checking that its spatial size (every dimension after the first two)
    is `size`, the one a graph traced by `SpatialTracer` holds as constants.

    Raises PrunewiseError for another size: the graph's padding or pooling, computed for the
    traced size, would give wrong outputs without an error (timm's "same" padding).
    """
    got = tuple(x.shape[2:])
    if not torch.jit.is_tracing() and got != tuple(size):
        raise PrunewiseError(
            f"this model takes inputs of spatial size {' x '.join(map(str, size))}, got "
            f"{' x '.join(map(str, got))}: its forward computes sizes from the input (as "
            "'same' padding does), which prunewise's graph of it holds for the size it was "
            "traced at; run it at that size, or prune it at the size it will run at"
        )
    return x


class _SizedProxy(fx.Proxy):
    """A proxy that knows the meta value of what it stands for (None when unknown)."""

    meta_value: Any = None

    def _spatial(self) -> tuple[int, ...] | None:
        value = self.meta_value
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    def size(self, dim: int | None = None) -> Any:
        shape = self._spatial()
        if shape is None:
            return self.tracer.create_proxy("call_method", "size", (self, dim), {})
        if dim is None:
            return self.shape
        index = dim % len(shape)
        if index >= 2:
            return shape[index]
        return self.tracer.create_proxy("call_method", "size", (self, dim), {})

    def dim(self) -> Any:
        shape = self._spatial()
        if shape is None:
            return self.tracer.create_proxy("call_method", "dim", (self,), {})
        return len(shape)

    @property
    def shape(self) -> Any:
        shape = self._spatial()
        whole = self.tracer.create_proxy("call_function", getattr, (self, "shape"), {})
        if shape is None:
            return whole
        head = [whole[k] for k in range(min(2, len(shape)))]
        return (*head, *shape[2:])

    @property
    def ndim(self) -> Any:
        return self.dim()

    def __bool__(self) -> bool:
        """A condition on a known value is decided by the example (a specialisation, as
        torch.jit.trace makes); fx's error otherwise."""
        if isinstance(self.meta_value, bool | int):
            return bool(self.meta_value)
        return super().__bool__()


def _meta_of(value: Any) -> Any:
    if isinstance(value, _SizedProxy):
        if value.meta_value is None:
            raise LookupError("no meta value")
        return value.meta_value
    if isinstance(value, fx.Proxy):
        raise LookupError("a proxy without meta value")
    return meta_like(value)


def meta_like(value: Any) -> Any:
    """A tensor's stand-in on the meta device (same shape, strides, dtype; no storage);
    anything else (None, a number) as it is."""
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    return value


class SpatialTracer(fx.Tracer):
    """fx's tracer (with the given leaf rule) that specialises spatial sizes to `example`,
    a meta tensor of the input's shape (see the module docstring)."""

    def __init__(self, example: torch.Tensor, is_leaf: Any) -> None:
        super().__init__()
        self.example = example
        self._is_leaf = is_leaf
        self._placeholders = 0
        self._plain = False

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return bool(self._is_leaf(m, module_qualified_name))

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)

    def create_proxy(  # type: ignore[override]
        self,
        kind: str,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None = None,
        type_expr: Any = None,
        proxy_factory_fn: Any = None,
    ) -> fx.Proxy:
        out = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if isinstance(out, _SizedProxy):
            try:
                out.meta_value = self._meta(kind, target, args, kwargs)
            except Exception:  # unknown: its sizes stay symbolic
                out.meta_value = None
        return out

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self._plain:  # computing a meta value: the module's own tensors, not proxies
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _meta(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict) -> Any:
        self._plain = True
        try:
            return self._compute(kind, target, args, kwargs)
        finally:
            self._plain = False

    def _compute(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict) -> Any:
        if kind == "placeholder":
            self._placeholders += 1
            if self._placeholders == 1:
                return self.example
            raise LookupError("only the first input has an example")
        if kind == "get_attr":
            value: Any = self.root
            for atom in str(target).split("."):
                value = getattr(value, atom)
            return meta_like(value)
        metas = fx.node.map_aggregate(args, _meta_of)
        kw = fx.node.map_aggregate(kwargs, _meta_of)
        if kind == "call_function":
            if target is getattr and metas[1] == "shape":
                return tuple(metas[0].shape)
            if target is operator.getitem and isinstance(metas[0], tuple):
                return metas[0][metas[1]]
            return target(*metas, **kw)
        if kind == "call_method":
            return getattr(metas[0], target)(*metas[1:], **kw)
        if kind == "call_module":
            module = self.root.get_submodule(str(target))
            stand_ins = {
                n: meta_like(t) for n, t in (*module.named_parameters(), *module.named_buffers())
            }
            with _reparametrize_module(module, stand_ins):  # its forward, not fx's __call__
                return type(module).forward(module, *metas, **kw)
        raise LookupError(kind)
