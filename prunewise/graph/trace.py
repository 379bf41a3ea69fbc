"""Trace a model with torch.fx and attach the shape of every intermediate tensor."""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prunewise.errors import PrunewiseError

__all__ = ["node_shape", "propagate_shapes", "trace"]


def trace(model: nn.Module) -> fx.GraphModule:
    """Return a torch.fx GraphModule for `model` (itself if it already is one)."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; the user needs the first line only
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunewiseError(
            f"cannot trace {type(model).__name__} with torch.fx ({first}); prunewise needs a "
            "model without data-dependent control flow in forward()"
        ) from exc


def propagate_shapes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    """Run one forward pass of a single example through `gm`, recording shapes in node.meta.

    `input_shape` is the shape of one example without the batch dimension, e.g. (3, 32, 32).
    The pass runs on a fake tensor when possible (no arithmetic), else on zeros.
    """
    if any(int(d) <= 0 for d in input_shape):
        raise PrunewiseError(f"input shape {tuple(input_shape)} has a non-positive dimension")
    was_training = gm.training
    gm.eval()
    try:
        param = next(gm.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        example = torch.zeros((1, *input_shape), device=device, dtype=dtype)
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except PrunewiseError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunewiseError(
            f"input shape {tuple(input_shape)} does not fit the model ({first}); "
            "pass the (channels, height, width) the model was built for"
        ) from exc
    finally:
        gm.train(was_training)


def node_shape(node: fx.Node) -> tuple[int, ...] | None:
    """Shape of the tensor a node produces, or None if it produces no single tensor."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None
