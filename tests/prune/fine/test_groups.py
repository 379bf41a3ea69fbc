"""Group views: enumeration order, short-group padding, inverse, non-zero counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunewise.errors import PrunewiseError
from prunewise.prune.fine import AXES, group_lengths, group_nonzeros, group_view, ungroup_view


def _reference_groups(w: torch.Tensor, g: int, axis: str) -> list[list[float | None]]:
    """Groups by explicit loops over the documented order; None marks a padded position."""
    out, inp = w.shape[0], w.shape[1]
    w3 = w.reshape(out, inp, -1)
    k = w3.shape[2]
    if axis == "in":
        rows = [[float(w3[o, i, p]) for i in range(inp)] for o in range(out) for p in range(k)]
    elif axis == "out":
        rows = [[float(w3[o, i, p]) for o in range(out)] for i in range(inp) for p in range(k)]
    else:
        rows = [[float(x) for x in w3[o].reshape(-1)] for o in range(out)]
    groups = []
    for row in rows:
        for start in range(0, len(row), g):
            chunk: list[float | None] = list(row[start : start + g])
            groups.append(chunk + [None] * (g - len(chunk)))
    return groups


def test_in_axis_order_on_a_small_conv() -> None:
    w = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).reshape(2, 3, 1, 2)
    view = group_view(w, 2, "in", fill=-1)
    # output 0, kernel position 0: inputs 0,1,2 hold 0, 2, 4; kernel position 1: 1, 3, 5
    assert view.tolist() == [
        [0, 2],
        [4, -1],
        [1, 3],
        [5, -1],
        [6, 8],
        [10, -1],
        [7, 9],
        [11, -1],
    ]


def test_out_and_flat_axes_on_a_linear() -> None:
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert group_view(w, 2, "out", fill=-1).tolist() == [
        [0, 4],
        [8, -1],
        [1, 5],
        [9, -1],
        [2, 6],
        [10, -1],
        [3, 7],
        [11, -1],
    ]
    assert group_view(w, 4, "flat").tolist() == w.tolist()


shapes = st.one_of(
    st.tuples(st.integers(1, 6), st.integers(1, 7)),
    st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 3)),
    st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3)),
)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, g=st.integers(2, 6), axis=st.sampled_from(AXES))
def test_view_matches_reference_and_inverts(shape: tuple[int, ...], g: int, axis: str) -> None:
    w = torch.randn(shape)
    view = group_view(w, g, axis, fill=float("nan"))
    ref = _reference_groups(w, g, axis)
    assert len(ref) == view.shape[0]
    got = [[None if math.isnan(x) else x for x in row] for row in view.tolist()]
    assert got == ref
    assert torch.equal(ungroup_view(view, w.shape, g, axis), w)
    lengths = group_lengths(w.shape, g, axis)
    assert lengths.tolist() == [sum(x is not None for x in row) for row in ref]
    counts = group_nonzeros(w > 0, g, axis)
    assert counts.tolist() == [sum(x is not None and x > 0 for x in row) for row in ref]


def test_group_nonzeros_ignores_padding_and_accepts_float_masks() -> None:
    mask = torch.ones(2, 5, 3, 3)
    counts = group_nonzeros(mask, 4, "in")
    assert counts.shape == (2 * 9 * 2,)
    assert counts.tolist() == [4, 1] * 18
    assert counts.dtype == torch.int64


def test_large_group_counts_do_not_overflow() -> None:
    mask = torch.ones(1, 300, dtype=torch.bool)
    assert group_nonzeros(mask, 300, "in").tolist() == [300]


@pytest.mark.parametrize("g", [1, 0, -3, 2.5, True])
def test_group_size_below_two_is_refused(g: object) -> None:
    with pytest.raises(PrunewiseError, match="group size"):
        group_view(torch.ones(4, 4), g, "in")  # type: ignore[arg-type]


def test_unknown_axis_lists_known_ones() -> None:
    with pytest.raises(PrunewiseError, match="known axes: in, out, flat"):
        group_view(torch.ones(4, 4), 2, "rows")


def test_one_dimensional_weight_is_refused() -> None:
    with pytest.raises(PrunewiseError, match=r"\(O, I, ...\), got \(4,\)"):
        group_view(torch.ones(4), 2, "in")


def test_ungroup_refuses_a_mismatched_shape() -> None:
    with pytest.raises(PrunewiseError, match="does not fit"):
        ungroup_view(torch.ones(3, 2), (2, 4), 2, "in")
