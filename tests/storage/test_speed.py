"""A ~2 M-weight FC layer goes through every format without Python loops over non-zeros."""

from __future__ import annotations

import numpy as np
import pytest

from prunewise.storage import Spec, best_format, decode, encode, format_bits, quantize_values


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, 2048), dtype=np.float32)
    w[rng.random(w.shape, dtype=np.float32) < 0.9] = 0
    return w


@pytest.mark.parametrize(
    "spec",
    [
        Spec("csr", index_bits=4),
        Spec("csc", index_bits=8, values="int8"),
        Spec("bitmap", values="codebook", codebook_bits=5),
        Spec("balanced", group=16),
        Spec("dense", values="int8"),
    ],
    ids=lambda s: s.label,
)
def test_two_million_weights(big: np.ndarray, spec: Spec) -> None:
    enc = encode(big, spec)
    assert enc.bits == format_bits(big, spec)
    out = decode(enc)
    assert np.array_equal(out.view(np.uint32), quantize_values(big, spec).view(np.uint32))


def test_best_format_on_two_million_weights(big: np.ndarray) -> None:
    spec, bits = best_format(big)
    assert spec.format == "csr" and spec.index_bits == 8  # ~10 % dense: gaps ~ 10, b=8 fits
    assert bits < 0.2 * big.size * 32
