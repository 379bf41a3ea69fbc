"""The weight as the storage code sees it: a finite float32 array and its 2-D matrix view."""

from __future__ import annotations

from math import prod

import numpy as np

from prunewise.errors import PrunewiseError

__all__ = ["as_mask", "as_weight", "matrix_shape"]


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of the 2-D view: rows = output channels (shape[0]), cols = the rest.

    Tensors with fewer than two dimensions (a bias, a scalar) are one row.
    """
    numel = prod(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    return rows, (numel // rows if rows else 0)


def _to_numpy(x: object) -> np.ndarray:
    """A numpy array from an array or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_shape(shape: tuple[int, ...], what: str) -> None:
    if prod(shape) == 0:
        raise PrunewiseError(f"{what} of shape {shape} has no elements; there is nothing to store")


def as_weight(weight: np.ndarray, what: str = "weight") -> np.ndarray:
    """A float32 copy of `weight`, -0.0 turned into +0.0; refuses empty or non-finite input."""
    arr = _to_numpy(weight)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise PrunewiseError(f"{what} has dtype {arr.dtype}; give a float32 array")
    _check_shape(arr.shape, what)
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, in words
        w = arr.astype(np.float32, copy=True)
    if not np.isfinite(w).all():
        bad = int(np.count_nonzero(~np.isfinite(w)))
        raise PrunewiseError(
            f"{what} of shape {arr.shape} holds {bad} NaN or infinite value(s) (or values too "
            "large for float32); fix the weight before storing it"
        )
    w += np.float32(0)  # -0.0 + 0.0 == +0.0: a stored zero always decodes to +0.0
    return w


def as_mask(mask_or_weight: np.ndarray, what: str = "weight") -> np.ndarray:
    """A boolean mask of the non-zeros: a bool array as given, anything else `!= 0`."""
    arr = _to_numpy(mask_or_weight)
    _check_shape(arr.shape, what)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise PrunewiseError(f"{what} has dtype {arr.dtype}; give a bool mask or a weight")
    return arr != 0
