"""Magnitude, global, balanced and N:M masks: exact counts, ranking, ties, validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunewise.errors import PrunewiseError
from prunewise.prune.fine import (
    AXES,
    balanced_mask,
    global_magnitude_masks,
    group_lengths,
    group_nonzeros,
    group_view,
    magnitude_mask,
    mask_sparsity,
    nm_mask,
)

ratios = st.floats(0.0, 0.95, allow_nan=False)
shapes = st.one_of(
    st.tuples(st.integers(1, 9), st.integers(1, 40)),
    st.tuples(st.integers(1, 6), st.integers(1, 20), st.integers(1, 3), st.integers(1, 3)),
)


def _weight(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=50, deadline=None)
@given(shape=shapes, ratio=ratios, seed=st.integers(0, 10**6))
def test_magnitude_removes_exact_count_of_smallest(
    shape: tuple[int, ...], ratio: float, seed: int
) -> None:
    w = _weight(shape, seed)
    mask = magnitude_mask(w, ratio)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int((~mask).sum()) == min(round(round(ratio * w.numel(), 9)), w.numel() - 1)
    if mask.any() and (~mask).any():
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_magnitude_ties_remove_higher_flat_index_first() -> None:
    w = torch.tensor([[1.0, -1.0, 1.0, 3.0], [1.0, 0.5, -1.0, 2.0]])
    mask = magnitude_mask(w, 0.5)  # remove 4: the 0.5, then 3 of the five |w| = 1
    assert mask.tolist() == [[True, True, False, True], [False, False, False, True]]
    mask = magnitude_mask(w, 0.25)  # remove 2: the 0.5 and the last |w| = 1 (index 6)
    assert mask.tolist() == [[True, True, True, True], [True, False, False, True]]


def test_magnitude_rounds_half_to_even_after_dropping_float_noise() -> None:
    w = torch.arange(1.0, 11.0)[None]
    assert int((~magnitude_mask(w, 0.25)).sum()) == 2  # 2.5 -> 2
    assert int((~magnitude_mask(w, 0.35)).sum()) == 4  # 3.5 -> 4
    assert int((~magnitude_mask(w, 0.0)).sum()) == 0


@settings(max_examples=30, deadline=None)
@given(ratio=ratios, seed=st.integers(0, 10**6))
def test_global_uses_one_threshold_and_exact_count(ratio: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    weights = {
        "a": torch.randn(8, 3, 3, 3, generator=g),
        "b": torch.randn(5, 8, generator=g) * 3,
        "c": torch.randn(2, 5, generator=g) * 0.1,
    }
    masks = global_magnitude_masks(weights, ratio)
    assert list(masks) == list(weights)
    total = sum(w.numel() for w in weights.values())
    removed = sum(int((~m).sum()) for m in masks.values())
    exact = round(round(ratio * total, 9))
    assert all(m.any() for m in masks.values())  # an emptied layer keeps its largest |w|
    assert exact - len(weights) <= removed <= exact
    rescued = {n for n, m in masks.items() if int(m.sum()) == 1}
    assert removed == exact or rescued
    kept = torch.cat([w.abs()[masks[n]] for n, w in weights.items() if n not in rescued] or [
        torch.zeros(0)])  # fmt: skip
    gone = torch.cat([w.abs()[~masks[n]] for n, w in weights.items()])
    if kept.numel() and gone.numel():
        assert kept.min() >= gone.max()


def test_magnitude_never_empties_a_layer() -> None:
    w = torch.randn(10, 27)
    assert int(magnitude_mask(w, 0.999).sum()) == 1  # round(0.999 x 270) = 270 would cut it
    masks = global_magnitude_masks({"big": torch.randn(64, 64) * 10, "small": w * 0.01}, 0.9)
    assert int(masks["small"].sum()) == 1 and masks["small"].view(-1)[w.abs().argmax()]


def test_global_breaks_ties_by_dict_order_then_index() -> None:
    weights = {"a": torch.ones(1, 2), "b": torch.ones(1, 2)}
    masks = global_magnitude_masks(weights, 0.25)
    assert masks["a"].tolist() == [[True, True]] and masks["b"].tolist() == [[True, False]]


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    ratio=st.floats(0.0, 0.85),
    g=st.sampled_from([2, 3, 4, 8, 16]),
    axis=st.sampled_from(AXES),
    seed=st.integers(0, 10**6),
)
def test_balanced_keeps_k_largest_in_every_group(
    shape: tuple[int, ...], ratio: float, g: int, axis: str, seed: int
) -> None:
    w = _weight(shape, seed)
    k = round(round(g * (1 - ratio), 9))
    if k < 1:
        with pytest.raises(PrunewiseError, match="0 weights per group"):
            balanced_mask(w, ratio, g, axis)
        return
    mask = balanced_mask(w, ratio, g, axis)
    counts = group_nonzeros(mask, g, axis)
    lengths = group_lengths(w.shape, g, axis)
    for count, length in zip(counts.tolist(), lengths.tolist(), strict=True):
        expected = k if length == g else max(1, round(round(length * (1 - ratio), 9)))
        assert count == expected
    gw = group_view(w.abs(), g, axis, fill=-1.0)
    gm = group_view(mask, g, axis, fill=False)
    for row_w, row_m in zip(gw, gm, strict=True):
        if row_m.any() and (~row_m & (row_w >= 0)).any():
            assert row_w[row_m].min() >= row_w[~row_m & (row_w >= 0)].max()


def test_balanced_on_a_hand_made_group_with_ties() -> None:
    w = torch.tensor([[3.0, -1.0, 1.0, 0.2, 5.0, 1.0]])  # groups of 4 along inputs: 4 + 2
    mask = balanced_mask(w, 0.5, group=4)
    # full group keeps round(4·0.5) = 2: 3.0 and the first |w| = 1 (index 1);
    # short group (2 long) keeps max(1, round(2·0.5)) = 1: the 5.0
    assert mask.tolist() == [[True, True, False, False, True, False]]


def test_balanced_at_the_same_ratio_matches_overall_sparsity() -> None:
    w = torch.randn(64, 64, 3, 3)
    mask = balanced_mask(w, 0.75)
    assert mask_sparsity(mask) == pytest.approx(0.75)
    assert bool((group_nonzeros(mask, 16, "in") == 4).all())


def test_balanced_refuses_a_ratio_that_empties_groups() -> None:
    with pytest.raises(PrunewiseError, match=r"0 weights per group of 16"):
        balanced_mask(torch.randn(4, 32), 0.99)


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 4)]),
    axis=st.sampled_from(AXES),
    seed=st.integers(0, 10**6),
)
def test_nm_every_full_group_has_exactly_n(
    shape: tuple[int, ...], nm: tuple[int, int], axis: str, seed: int
) -> None:
    n, m = nm
    w = _weight(shape, seed)
    mask = nm_mask(w, n, m, axis)
    counts = group_nonzeros(mask, m, axis)
    lengths = group_lengths(w.shape, m, axis)
    assert torch.equal(counts, torch.minimum(lengths, torch.tensor(n)))
    if lengths.eq(m).all():
        assert torch.equal(mask, balanced_mask(w, 1 - n / m, m, axis))


def test_nm_two_of_four_on_a_row() -> None:
    w = torch.tensor([[0.1, -4.0, 3.0, 0.2, 1.0, 1.0, 1.0, -9.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, False, False, True]]


@pytest.mark.parametrize(("n", "m"), [(5, 4), (0, 4), (-1, 2)])
def test_nm_refuses_bad_n_and_m(n: int, m: int) -> None:
    with pytest.raises(PrunewiseError, match=rf"N:M needs 1 ≤ N ≤ M, got {n}:{m}"):
        nm_mask(torch.randn(4, 8), n, m)


def test_nm_refuses_m_of_one() -> None:
    with pytest.raises(PrunewiseError, match="M ≥ 2"):
        nm_mask(torch.randn(4, 8), 1, 1)


@pytest.mark.parametrize("ratio", [1.2, 1.0, -0.1, float("nan"), True, "0.5"])
def test_ratio_outside_unit_interval_is_refused(ratio: object) -> None:
    for fn in (magnitude_mask, balanced_mask):
        with pytest.raises(PrunewiseError, match=r"ratio must be in \[0, 1\), got"):
            fn(torch.randn(4, 4), ratio)  # type: ignore[operator]
    with pytest.raises(PrunewiseError, match=r"got 1\.2"):
        magnitude_mask(torch.randn(4, 4), 1.2)


def test_unknown_axis_is_refused_with_the_known_ones() -> None:
    with pytest.raises(PrunewiseError, match="known axes: in, out, flat"):
        balanced_mask(torch.randn(4, 4), 0.5, 2, axis="kernel")


def test_non_finite_weights_are_refused() -> None:
    with pytest.raises(PrunewiseError, match="NaN or infinite"):
        magnitude_mask(torch.tensor([[1.0, float("inf")]]), 0.5)


def test_mask_sparsity() -> None:
    assert mask_sparsity(torch.tensor([True, False, False, False])) == pytest.approx(0.75)
    assert mask_sparsity(torch.tensor([[1.0, 0.0]])) == pytest.approx(0.5)
    with pytest.raises(PrunewiseError, match="non-empty"):
        mask_sparsity(torch.zeros(0))


def test_global_refuses_empty_input() -> None:
    with pytest.raises(PrunewiseError, match="at least one"):
        global_magnitude_masks({}, 0.5)
