"""Checks that a model suits what it is asked to do: its input shape, its BatchNorm layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunewise.errors import PrunewiseError, first_line
from prunewise.graph.trace import check_one_input
from prunewise.resources import free_if_short, gigabytes

__all__ = ["activation_bytes", "check_input_fits", "has_batchnorm"]

_MAX_REASON = 200


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` has at least one BatchNorm layer with a learnable gamma."""
    return any(isinstance(m, _BatchNorm) and m.affine for m in model.modules())


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, shortened."""
    first = first_line(exc)
    return first if len(first) <= _MAX_REASON else first[: _MAX_REASON - 3] + "..."


def _layer(name: str, module: nn.Module) -> str:
    return f"layer {name or '(the model)'} ({type(module).__name__})"


def _in_channels(module: nn.Module) -> int | None:
    """Input channels a convolution, BatchNorm or linear layer expects, else None."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.in_channels)
    if isinstance(module, _BatchNorm):
        return int(module.num_features)
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """Bytes of all module outputs of one forward pass of one image (what training keeps for
    the backward pass), found on the meta device: nothing is allocated. None when the model
    cannot run there (an operation without a meta kernel, or a shape that does not fit)."""
    total = 0

    def leave(_module: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    stand_ins = {
        name: torch.empty_like(t, device="meta")
        for name, t in (*model.named_parameters(), *model.named_buffers())
    }
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(leave) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            x = torch.zeros((1, *input_shape), device="meta", dtype=dtype)
            torch.func.functional_call(model, stand_ins, (x,))
    except Exception:  # the real pass decides, and words the error
        return None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def check_input_fits(model: nn.Module, input_shape: tuple[int, ...], *, hint: str = "") -> Any:
    """Run one zero example of `input_shape` (C, H, W) through `model` (in eval mode) and
    return its output; explain a failure.

    The `PrunewiseError` names the layer that fails and what it expected; `hint` (how to fix
    it in the caller's terms) is appended. Before the real pass, the activations of one image
    are measured on the meta device: a shape whose activations exceed the memory free on the
    model's device is refused without allocating anything.
    """
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise PrunewiseError(f"input shape {shape} needs positive dimensions{hint}")
    check_one_input(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    memory = torch.device("cpu") if device.type == "meta" else device  # where it would run
    needed = activation_bytes(model, shape)
    if (free := free_if_short(needed, memory)) is not None:
        raise PrunewiseError(
            f"input shape {shape} needs {gigabytes(needed)} of activations for a single "
            f"image, more than the {gigabytes(free)} free on {memory.type}; use a smaller "
            f"input size{hint}"
        )
    active: list[tuple[str, nn.Module, Any]] = []
    done: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}

    def enter(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        active.append((names.get(id(module), "?"), module, x))

    def leave(module: nn.Module, _args: tuple[Any, ...], _out: Any) -> None:
        if active and active[-1][1] is module:
            done.append(active.pop()[0])

    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            return model(torch.zeros((1, *shape), device=device, dtype=dtype))
    except PrunewiseError as exc:  # the model's own words (a traced size it checks): whole
        raise PrunewiseError(f"input shape {shape} does not fit the model: {exc}{hint}") from exc
    except Exception as exc:
        raise PrunewiseError(_describe_failure(shape, active, done, exc) + hint) from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _describe_failure(
    shape: tuple[int, ...],
    active: list[tuple[str, nn.Module, Any]],
    done: list[str],
    exc: BaseException,
) -> str:
    """'input shape ... does not fit the model: <which layer, what it expected>'."""
    head = f"input shape {shape} does not fit the model"
    if not active:
        where = f"after layer {done[-1]}" if done else "in forward()"
        return f"{head}: {where}: {_reason(exc)}"
    name, module, x = active[-1]
    expected = _in_channels(module)
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and expected is not None:
        got = int(x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1])
        unit = "input feature" if isinstance(module, nn.Linear) else "input channel"
        if got != expected:
            return f"{head}: {_layer(name, module)} takes {_plural(expected, unit)}, gets {got}"
    seen = f" on input {tuple(x.shape[1:])}" if isinstance(x, torch.Tensor) else ""
    return f"{head}: {_layer(name, module)} fails{seen}: {_reason(exc)}"
