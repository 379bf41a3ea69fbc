"""PE-array model: hand-made masks with the arithmetic written out, a loop reference, timing."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunewise.errors import PrunewiseError
from prunewise.hw import LayerCycles, PEArray, layer_cycles, model_cycles, total
from prunewise.prune.fine import AXES, balanced_mask, magnitude_mask


def _mask_from_counts(counts: list[int], g: int) -> torch.Tensor:
    """One output channel, 1x1 kernel, len(counts)·g inputs; group i keeps its first counts[i]."""
    mask = torch.zeros(1, len(counts) * g, 1, 1, dtype=torch.bool)
    for i, c in enumerate(counts):
        mask[0, i * g : i * g + c] = True
    return mask


def test_the_worked_example() -> None:
    mask = _mask_from_counts([4, 1, 2, 2], g=4)
    c = layer_cycles(mask, PEArray(pes=2, group=4))
    assert c.modelled == max(4, 1) + max(2, 2) == 6
    assert c.dense == 4 + 4 == 8
    assert c.ideal == math.ceil(9 / 2) == 5
    assert c.nonzeros == c.macs == 9
    assert c.utilisation == pytest.approx(9 / (2 * 6)) == 0.75
    assert c.speedup == pytest.approx(8 / 6)


def test_groups_run_over_kernel_positions_before_the_next_output_channel() -> None:
    # 2 outputs, 4 inputs, 1x2 kernel, g = 4: one group per (output, kernel position),
    # in order (o0,p0), (o0,p1), (o1,p0), (o1,p1)
    mask = torch.zeros(2, 4, 1, 2, dtype=torch.bool)
    mask[0, :3, 0, 0] = True  # 3
    mask[0, :1, 0, 1] = True  # 1
    mask[1, :2, 0, 0] = True  # 2
    mask[1, :4, 0, 1] = True  # 4
    c = layer_cycles(mask, PEArray(pes=2, group=4), positions=10)
    assert c.modelled == (max(3, 1) + max(2, 4)) * 10 == 70
    assert c.dense == (4 + 4) * 10
    assert c.ideal == math.ceil(10 / 2) * 10 == 50
    assert c.macs == 100 and c.nonzeros == 10
    assert c.utilisation == pytest.approx(100 / (2 * 70))
    # three PEs: steps {3, 1, 2} and {4}
    assert layer_cycles(mask, PEArray(pes=3, group=4)).modelled == 3 + 4


def test_short_groups_and_a_partial_last_step() -> None:
    # 1 output, 6 inputs, g = 4: groups of 4 and 2 per kernel position; 3x1 kernel -> 6 groups
    mask = torch.ones(1, 6, 3, 1, dtype=torch.bool)
    c = layer_cycles(mask, PEArray(pes=4, group=4))
    # steps: {4, 2, 4, 2} and {4, 2}: dense = 4 + 4
    assert c.dense == c.modelled == 8
    assert c.ideal == math.ceil(18 / 4) == 5
    assert c.utilisation == pytest.approx(18 / (4 * 8))


def test_fully_connected_and_out_axis() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    # axis "out", g = 2: per input column, groups (rows 0-1), (rows 2-3)
    # column 0: 2, 1; column 1: 1, 1; column 2: 0, 1; column 3: 0, 0
    c = layer_cycles(mask, PEArray(pes=2, group=2, axis="out"))
    assert c.modelled == 2 + 1 + 1 + 0
    # axis "in": row groups (0-1), (2-3): 2, 0 | 1, 0 | 2, 1 | 0, 0
    assert layer_cycles(mask, PEArray(pes=2, group=2, axis="in")).modelled == 2 + 1 + 2 + 0


def test_an_all_zero_layer_takes_no_cycles() -> None:
    c = layer_cycles(torch.zeros(4, 8, dtype=torch.bool), PEArray(pes=2, group=4))
    assert (c.modelled, c.ideal, c.nonzeros) == (0, 0, 0)
    assert c.dense == 4 * 4  # 8 groups of 4 in 4 steps of 2
    assert c.utilisation == 0.0 and c.speedup == math.inf


def _loop_reference(mask: torch.Tensor, pes: int, g: int) -> tuple[int, int]:
    """Modelled and dense cycles per position by plain loops over the documented order."""
    out, inp = mask.shape[0], mask.shape[1]
    m3 = mask.reshape(out, inp, -1)
    counts, lengths = [], []
    for o in range(out):
        for p in range(m3.shape[2]):
            for start in range(0, inp, g):
                chunk = m3[o, start : start + g, p]
                counts.append(int(chunk.sum()))
                lengths.append(chunk.numel())
    modelled = sum(max(counts[i : i + pes]) for i in range(0, len(counts), pes))
    dense = sum(max(lengths[i : i + pes]) for i in range(0, len(lengths), pes))
    return modelled, dense


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 20), st.integers(1, 3), st.integers(1, 3)),
    pes=st.integers(1, 6),
    g=st.integers(2, 8),
    density=st.floats(0.0, 1.0),
    positions=st.integers(1, 50),
    seed=st.integers(0, 10**6),
)
def test_matches_loop_reference_and_bounds(
    shape: tuple[int, ...], pes: int, g: int, density: float, positions: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=gen) < density
    c = layer_cycles(mask, PEArray(pes=pes, group=g), positions)
    modelled, dense = _loop_reference(mask, pes, g)
    assert c.modelled == modelled * positions
    assert c.dense == dense * positions
    nnz = int(mask.sum())
    assert c.ideal == math.ceil(nnz / pes) * positions
    assert c.ideal <= c.modelled <= c.dense
    assert 0.0 <= c.utilisation <= 1.0


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(2, 40), st.integers(1, 3)),
    axis=st.sampled_from(AXES),
    g=st.sampled_from([2, 4, 8]),
)
def test_dense_mask_runs_at_dense_cycles(shape: tuple[int, ...], axis: str, g: int) -> None:
    mask = torch.ones(shape, dtype=torch.bool)
    c = layer_cycles(mask, PEArray(pes=3, group=g, axis=axis))
    assert c.modelled == c.dense and c.speedup == 1.0
    assert c.nonzeros == mask.numel()


def test_balanced_mask_reaches_the_ideal_when_groups_divide_evenly() -> None:
    w = torch.randn(32, 64, 3, 3)
    array = PEArray(pes=16, group=16)
    c = layer_cycles(balanced_mask(w, 0.5, 16), array, positions=7)
    # 32·9·4 groups of 8 non-zeros: 72 steps of 8 cycles
    assert c.modelled == c.ideal == 72 * 8 * 7
    assert c.utilisation == 1.0


def test_unstructured_is_slower_than_balanced_at_the_same_ratio() -> None:
    w = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(1))
    array = PEArray(pes=16, group=16)
    unstructured = layer_cycles(magnitude_mask(w, 0.75), array, positions=64)
    balanced = layer_cycles(balanced_mask(w, 0.75), array, positions=64)
    assert unstructured.nonzeros == balanced.nonzeros
    assert unstructured.modelled > balanced.modelled
    assert balanced.speedup == pytest.approx(1 / (1 - 0.75), rel=0.05)
    assert unstructured.speedup < 0.8 * balanced.speedup


def test_model_cycles_and_total() -> None:
    conv = _mask_from_counts([4, 1, 2, 2], g=4)
    fc = torch.ones(2, 4, dtype=torch.bool)
    array = PEArray(pes=2, group=4)
    layers = model_cycles({"conv": conv, "fc": fc}, {"conv": 9}, array)
    assert layers["conv"].modelled == 6 * 9
    assert layers["fc"].modelled == 4  # one position by default: steps {4, 4}
    t = total(layers)
    assert t.modelled == 6 * 9 + 4 and t.dense == 8 * 9 + 4 and t.ideal == 5 * 9 + 4
    assert t.macs == 9 * 9 + 8
    assert t.utilisation == pytest.approx((9 * 9 + 8) / (2 * (6 * 9 + 4)))
    assert t.speedup == pytest.approx((8 * 9 + 4) / (6 * 9 + 4))
    assert total(list(layers.values())) == t


def test_model_cycles_validation() -> None:
    conv = torch.ones(2, 4, 3, 3, dtype=torch.bool)
    with pytest.raises(PrunewiseError, match="'conv': give its output positions"):
        model_cycles({"conv": conv}, {})
    with pytest.raises(PrunewiseError, match="without a mask"):
        model_cycles({"conv": conv}, {"conv": 4, "cnov": 4})
    with pytest.raises(PrunewiseError, match="'conv': output positions must be a positive"):
        model_cycles({"conv": conv}, {"conv": 0})
    with pytest.raises(PrunewiseError, match="different PE counts"):
        total([layer_cycles(conv, PEArray(pes=2)), layer_cycles(conv, PEArray(pes=4))])
    with pytest.raises(PrunewiseError, match="at least one"):
        total({})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pes": 0}, "at least 1 processing element"),
        ({"group": 1}, "group size"),
        ({"axis": "kernel"}, "known axes: in, out, flat"),
    ],
)
def test_pe_array_is_validated(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PrunewiseError, match=match):
        PEArray(**kwargs)  # type: ignore[arg-type]


def test_layer_cycles_is_frozen_and_checked() -> None:
    c = layer_cycles(torch.ones(2, 4, dtype=torch.bool), PEArray(pes=2, group=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.modelled = 0  # type: ignore[misc]
    with pytest.raises(PrunewiseError, match="ideal ≤ modelled ≤ dense"):
        LayerCycles(dense=4, ideal=5, modelled=4, nonzeros=8, macs=8, pes=2)
    assert dataclasses.asdict(c)["utilisation"] == 1.0


def test_an_alexnet_sized_fc_mask() -> None:
    mask = torch.rand(4096, 9216, generator=torch.Generator().manual_seed(0)) < 0.1
    c = layer_cycles(mask, PEArray())
    assert c.nonzeros == int(mask.sum())
    assert c.dense == 4096 * 9216 // 16 // 16 * 16
