"""What a Python caller hands prunewise, checked before any work: a batch of images, and the
model that export and INT8 run (a float32 copy, so that the caller's model stays as it is)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from prunewise.errors import PrunewiseError, first_line

__all__ = ["check_images", "inference_copy", "model_dtype", "tied_names"]


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    tensors = (*model.parameters(), *model.buffers())
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def inference_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of `model` in eval mode on the CPU: what ONNX export, INT8 and deploy
    run (ONNX Runtime's float model and INT8 calibration are float32). The caller's model keeps
    its mode, device and dtype; one already so (deploy's own copy, handed on to quantize and
    export) is returned as it is. Raises PrunewiseError when the model cannot be copied."""
    tensors = (*model.parameters(), *model.buffers())
    if (
        not any(m.training for m in model.modules())
        and all(t.device.type == "cpu" for t in tensors)
        and all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    ):
        return model
    try:
        out = copy.deepcopy(model)
    except Exception as exc:  # an attribute deepcopy cannot copy (a lock, a file handle)
        why = first_line(exc)
        raise PrunewiseError(f"cannot copy the model to export it: {why}") from exc
    return out.float().eval().cpu()


def check_images(
    images: Any,
    input_shape: tuple[int, ...] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    what: str = "images",
) -> torch.Tensor:
    """`images`, a batch (N, *input_shape) of at least one finite image, as `dtype` (a NumPy
    array becomes a tensor; float64 images for a float32 model are cast). Raises
    PrunewiseError, saying what to change, for another type, integer images (not yet
    converted as in training), one image without its batch dimension, another image size, an
    empty batch, or NaN or infinite values."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise PrunewiseError(
            f"{what} must be a tensor (N, C, H, W), got {type(images).__name__}; "
            "stack them with torch.stack"
        )
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    if shape is not None and tuple(images.shape) == shape:
        raise PrunewiseError(
            f"{what} are one image {shape}: pass a batch (N, C, H, W), e.g. images.unsqueeze(0)"
        )
    if images.dim() < 2 or images.shape[0] == 0:
        raise PrunewiseError(
            f"{what} must be a non-empty batch (N, C, ...), got {tuple(images.shape)}"
        )
    if shape is not None and tuple(images.shape[1:]) != shape:
        raise PrunewiseError(
            f"{what} are {tuple(images.shape[1:])} each, the model was traced at {shape}; "
            "resize them, or trace at their size"
        )
    if not images.is_floating_point():
        raise PrunewiseError(
            f"{what} are {str(images.dtype).removeprefix('torch.')}: pass them as the model sees "
            "them in training (float, normalised the same way), e.g. images.float() / 255 "
            "then your normalisation"
        )
    bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
    if bad:
        raise PrunewiseError(f"{bad} of {len(images)} {what} hold NaN or infinite values")
    return images.to(dtype)


def tied_names(model: nn.Module) -> list[list[str]]:
    """The names of each parameter that `model` holds under several names (tied weights)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]
