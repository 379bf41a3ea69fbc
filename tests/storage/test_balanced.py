"""Balanced (Kang) storage: group geometry, padding, refusal of over-full groups, best_format."""

from __future__ import annotations

import numpy as np
import pytest

from prunewise.errors import PrunewiseError
from prunewise.storage import (
    OverfullGroupError,
    Spec,
    best_format,
    decode,
    default_candidates,
    encode,
    format_bits,
)


def _balanced_weight(shape: tuple[int, ...], g: int, k: int, seed: int = 0) -> np.ndarray:
    """A conv/FC weight with exactly k non-zeros in every group of g input channels."""
    rng = np.random.default_rng(seed)
    out, inp = shape[0], shape[1]
    moved = rng.standard_normal((out, *shape[2:], inp)).astype(np.float32)
    lines = moved.reshape(-1, inp // g, g)
    keep = np.argsort(rng.random(lines.shape), axis=-1)[..., :k]
    mask = np.zeros(lines.shape, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    lines[~mask] = 0
    return np.moveaxis(lines.reshape(moved.shape), -1, 1).copy()


def test_balanced_weight_round_trips_with_fixed_k() -> None:
    w = _balanced_weight((8, 32, 3, 3), g=16, k=4)
    enc = encode(w, Spec("balanced", group=16, k=4))
    # 8 * 9 lines * 2 groups = 144 groups, 4 slots each of 4 + 32 bits.
    assert enc.bits == 144 * 4 * 36 == format_bits(w, Spec("balanced", group=16))
    np.testing.assert_array_equal(decode(enc), w)
    # Along output channels the same weight is not balanced: inferred k is larger.
    assert encode(w, Spec("balanced", group=8, axis="out")).spec.k > 2


def test_overfull_group_is_refused_naming_the_group() -> None:
    w = np.zeros((2, 8, 3, 3), dtype=np.float32)
    w[0, 0, 0, 0] = 1.0
    w[1, 4:6, 2, 1] = [2.0, 3.0]  # output 1, kernel position (2, 1), input channels 4..7
    # line = output 1 * 9 + kernel position 7 = 16; 2 groups per line -> group 33.
    with pytest.raises(OverfullGroupError) as info:
        encode(w, Spec("balanced", group=4, k=1))
    msg = str(info.value)
    for phrase in (
        "1 of 36 groups",
        "group 33 (output channel 1, kernel position (2, 1), input channels 4..7), has 2",
        "k=None to infer k=2",
    ):
        assert phrase in msg
    assert isinstance(info.value, PrunewiseError)
    with pytest.raises(OverfullGroupError, match=r"output channels 0\.\.1"):
        format_bits(np.ones((2, 3), np.float32), Spec("balanced", group=2, k=1, axis="out"))
    with pytest.raises(OverfullGroupError, match=r"output channel 0, flattened weights 4\.\.5"):
        format_bits(np.float32([[1, 0, 0, 0, 1, 1]]), Spec("balanced", group=2, k=1, axis="flat"))


def test_padded_last_group_holds_zeros_and_round_trips() -> None:
    # (1, 10), g = 4: groups 0..3, 4..7, 8..9 + 2 padding; k = 3 -> 3 groups * 3 * (2 + 32).
    w = np.float32([[1, 2, 0, 3, 0, 0, 0, 0, 4, 5]])
    spec = Spec("balanced", group=4, k=3)
    enc = encode(w, spec)
    assert enc.bits == 3 * 3 * 34
    np.testing.assert_array_equal(decode(enc), w)
    # Index stream: group 0 keeps 0, 1, 3; group 1 (all zero) keeps 0, 1, 2; group 2 keeps
    # 8, 9 and the first padded position 2 -> 00 01 11 | 00 01 10 | 00 01 10, then the
    # values start with 1.0f = 0x3F800000, whose first six bits are 001111.
    assert enc.payload[:3] == bytes([0b00011100, 0b01100001, 0b10 << 6 | 0b001111])


def test_one_dimensional_and_k_zero() -> None:
    b = np.float32([0, 0, 0, 0, 0])
    enc = encode(b, Spec("balanced", group=2))
    assert enc.spec.k == 0 and enc.bits == 0 and enc.payload == b""
    np.testing.assert_array_equal(decode(enc), b)
    v = np.float32([0, 1.5, 0, -2.0, 7.0])
    np.testing.assert_array_equal(decode(encode(v, Spec("balanced", group=2, axis="out"))), v)


def test_best_format_picks_the_fewest_bits() -> None:
    rng = np.random.default_rng(0)
    sparse = rng.standard_normal((64, 256)).astype(np.float32)
    sparse[rng.random(sparse.shape) < 0.97] = 0
    spec, bits = best_format(sparse)
    all_bits = {s: format_bits(sparse, s) for s in default_candidates()}
    assert bits == min(all_bits.values()) == format_bits(sparse, spec)
    assert spec.format in ("csr", "csc")
    dense = rng.standard_normal((16, 16)).astype(np.float32)
    assert best_format(dense) == (Spec("dense"), 16 * 16 * 32)
    # A balanced weight: balanced with g = 16, k = 2 beats the rest; k is filled in.
    w = _balanced_weight((16, 64), g=16, k=2)
    spec, bits = best_format(w, [Spec("bitmap"), Spec("balanced", group=16)])
    assert spec == Spec("balanced", group=16, k=2)
    assert bits == 16 * 4 * 2 * 36 < format_bits(w, Spec("bitmap"))


def test_best_format_skips_overfull_balanced_and_needs_a_candidate() -> None:
    w = np.ones((4, 16), dtype=np.float32)
    spec, _ = best_format(w, [Spec("balanced", group=16, k=1), Spec("csr")])
    assert spec.format == "csr"
    with pytest.raises(PrunewiseError, match="no candidate format can hold"):
        best_format(w, [Spec("balanced", group=16, k=1)])
    with pytest.raises(PrunewiseError, match="at least one candidate"):
        best_format(w, [])
