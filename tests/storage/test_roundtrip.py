"""Property-based round trips for every format x value encoding, and value-encoding details."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunewise.errors import PrunewiseError
from prunewise.storage import (
    Encoded,
    Spec,
    decode,
    encode,
    format_bits,
    kmeans_1d,
    quantize_values,
)
from prunewise.storage.values import fit_table


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype == np.float32
        and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    )


@st.composite
def weights(draw: st.DrawFn) -> np.ndarray:
    """Random shapes (1-D to 4-D), densities, magnitudes, and sometimes few distinct values."""
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "integers", "wide"]))
    if kind == "normal":
        w = rng.standard_normal(shape)
    elif kind == "integers":
        w = rng.integers(-3, 4, size=shape)
    else:
        w = rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 6, size=shape)
    w = w.astype(np.float32)
    w[rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 0.7, 0.95, 1.0]))] = 0
    if draw(st.booleans()):
        w[w == 0] = -0.0  # stored zeros always come back as +0.0
    return w


specs = st.builds(
    Spec,
    format=st.sampled_from(["dense", "csr", "csc", "bitmap", "balanced"]),
    values=st.sampled_from(["fp32", "int8", "codebook"]),
    index_bits=st.integers(2, 16),
    codebook_bits=st.integers(1, 8),
    group=st.integers(2, 9),
    axis=st.sampled_from(["in", "out", "flat"]),
)


@settings(max_examples=300, deadline=None)
@given(w=weights(), spec=specs)
def test_round_trip_is_bit_identical_and_counts_agree(w: np.ndarray, spec: Spec) -> None:
    q = quantize_values(w, spec)
    enc = encode(w, spec)
    assert enc.bits == format_bits(w, spec) == format_bits(w != 0, spec)
    assert len(enc.payload) == -(-enc.bits // 8)
    assert _same_bits(decode(enc), q)
    # w' = quantize_values(w) is a fixed point: it encodes and decodes to itself exactly.
    assert _same_bits(quantize_values(q, spec), q)
    again = encode(q, spec)
    assert _same_bits(decode(again), q)
    assert again.bits == format_bits(q, spec)
    # Serialised on its own and back.
    restored = Encoded.from_bytes(enc.to_bytes())
    assert restored == enc
    assert _same_bits(decode(restored), q)
    if spec.values == "fp32":
        assert _same_bits(q, w + np.float32(0))


@settings(max_examples=150, deadline=None)
@given(w=weights(), spec=specs, data=st.data())
def test_damaged_payloads_give_prunewise_errors_only(
    w: np.ndarray, spec: Spec, data: st.DataObject
) -> None:
    enc = encode(w, spec)
    payload = bytearray(enc.payload)
    if not payload:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(payload)))
    for damaged in (
        Encoded(enc.shape, enc.spec, enc.bits, bytes(payload)),
        Encoded(enc.shape, enc.spec, enc.bits, bytes(payload[:cut])),
    ):
        try:
            out = decode(damaged)
        except PrunewiseError as exc:
            assert "damaged" in str(exc) or "truncated" in str(exc)
        else:
            assert out.shape == w.shape and out.dtype == np.float32


def test_int8_finds_the_scale_that_reproduces_w_prime() -> None:
    # An int8 weight made elsewhere with arbitrary float32 scales s (largest code +-127):
    # max|w'| / 127 rounds back to s in most rows but not all (about 0.8 % of scales); the
    # encoder then tries the float32 neighbours and must reproduce w' exactly.
    rng = np.random.default_rng(1)
    scale = (10.0 ** rng.uniform(-8, 8, size=4000)).astype(np.float32)
    codes = rng.integers(-127, 128, size=(4000, 12))
    codes[:, 0] = rng.choice([-127, 127], size=4000)
    w = (codes.astype(np.float32) * scale[:, None]).astype(np.float32)
    spec = Spec("bitmap", values="int8")
    nominal = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float32)
    assert (nominal != scale).sum() > 0  # the neighbour search is really needed here
    np.testing.assert_array_equal(fit_table(w, spec), scale)
    assert _same_bits(quantize_values(w, spec), w)
    assert _same_bits(decode(encode(w, spec)), w)


def test_int8_codes_are_symmetric_per_channel() -> None:
    w = np.array([[1.0, -0.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0], [-3.0, 1.5, 0, 0]], np.float32)
    q = quantize_values(w, Spec(values="int8"))
    s0, s2 = np.float32(1.0) / np.float32(127), np.float32(3.0) / np.float32(127)
    expected = np.array(
        [[127 * s0, -64 * s0, 0, 32 * s0], [0, 0, 0, 0], [-127 * s2, 64 * s2, 0, 0]], np.float32
    )
    np.testing.assert_array_equal(q, expected)
    assert not np.signbit(q[1]).any()


def test_codebook_reserves_zero_and_learns_at_most_2q_minus_1_values() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    spec = Spec("csr", values="codebook", codebook_bits=3)
    q = quantize_values(w, spec)
    table = fit_table(w, spec)
    assert table.size == 8 and table[0] == 0 and np.all(np.diff(table[1:]) >= 0)
    assert set(np.unique(q[w != 0])) <= set(table[1:])
    assert np.all(q[w == 0] == 0)
    # Every non-zero goes to its nearest centroid.
    nearest = table[1:][np.abs(w[w != 0][:, None] - table[1:][None, :]).argmin(axis=1)]
    np.testing.assert_allclose(q[w != 0], nearest)


def test_kmeans_1d_is_deterministic_and_finds_clear_clusters() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-5, 0.1, 500), rng.normal(2, 0.1, 300), rng.normal(9, 0.1, 200)])
    c = kmeans_1d(x.astype(np.float32), 3)
    np.testing.assert_allclose(c, [-5, 2, 9], atol=0.05)
    np.testing.assert_array_equal(kmeans_1d(x.astype(np.float32), 3), c)
    # At most n_clusters distinct values: the centroids are exactly those values.
    np.testing.assert_array_equal(kmeans_1d(np.float32([3, 1, 3, 2]), 5), np.float32([1, 2, 3]))
    assert kmeans_1d(np.zeros(0, np.float32), 4).size == 0


@pytest.mark.parametrize(
    ("weight", "phrase"),
    [
        (np.zeros((0, 3), np.float32), "no elements"),
        (np.array([1.0, np.nan], np.float32), "NaN or infinite"),
        (np.array([1e39], np.float64), "NaN or infinite"),
        (np.array(["a"]), "dtype"),
    ],
)
def test_bad_weights_are_refused(weight: np.ndarray, phrase: str) -> None:
    with pytest.raises(PrunewiseError, match=phrase):
        encode(weight, Spec("csr"))


def test_from_bytes_refuses_foreign_or_inconsistent_data() -> None:
    enc = encode(np.eye(3, dtype=np.float32), Spec("csr"))
    with pytest.raises(PrunewiseError, match="no PWTENSOR marker"):
        Encoded.from_bytes(b"hello")
    with pytest.raises(PrunewiseError, match="damaged or truncated"):
        Encoded.from_bytes(enc.to_bytes()[:-1])


def test_torch_tensors_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    t = torch.tensor([[0.0, 1.5], [-2.0, 0.0]], requires_grad=True)
    enc = encode(t, Spec("csr", values="int8"))
    assert enc.bits == format_bits(t, Spec("csr", values="int8"))
    np.testing.assert_array_equal(decode(enc), quantize_values(t.detach().numpy(), enc.spec))
