"""Hand-computed bit and byte counts on tiny tensors (the arithmetic is in each test)."""

from __future__ import annotations

import numpy as np
import pytest

from prunewise.storage import Spec, decode, encode, format_bits, format_bytes


def _bits(weight: np.ndarray, spec: Spec) -> int:
    """The bits of `spec`, checked three ways: from the weight, from its mask, and encoded."""
    enc = encode(weight, spec)
    assert format_bits(weight, spec) == format_bits(weight != 0, spec) == enc.bits
    assert enc.nbytes == format_bytes(weight, spec) == -(-enc.bits // 8)
    np.testing.assert_array_equal(decode(enc), weight)  # small integers: exact in every encoding
    return enc.bits


def _row(n: int, nonzeros: dict[int, float]) -> np.ndarray:
    w = np.zeros((1, n), dtype=np.float32)
    for col, value in nonzeros.items():
        w[0, col] = value
    return w


def test_csr_filler_on_a_1x20_row_b4() -> None:
    # Non-zeros at columns 0 and 19, b = 4 (an index holds 0..15 zeros skipped).
    # Column 0: 0 zeros skipped -> index 0, no filler.
    # Column 19: 18 zeros skipped > 15 -> floor(18 / 16) = 1 filler: index 15, value 0, standing
    # on column 16 (it skips columns 1..15); then the non-zero skips 17, 18 -> index 2.
    # Entries E = 3; pointers: R + 1 = 2 of ceil(log2(3 + 1)) = 2 bits; 8-bit width field.
    # fp32: 8 + 2*2 + 3*4 + 3*32 = 8 + 4 + 12 + 96 = 120 bits = 15 bytes.
    w = _row(20, {0: 1.0, 19: 2.0})
    assert _bits(w, Spec("csr", index_bits=4)) == 120
    # The stream: 00000010 | 00 11 | 0000 1111 0010 | 1.0 | 0.0 | 2.0 (IEEE-754, big-endian).
    expected = bytes([0x02, 0x30, 0xF2]) + bytes.fromhex("3f8000000000000040000000")
    assert encode(w, Spec("csr", index_bits=4)).payload == expected


def test_csr_same_row_b8_needs_no_filler() -> None:
    # b = 8: 18 zeros fit in one index -> E = 2; pointers 2 x ceil(log2 3) = 2 bits.
    # 8 + 2*2 + 2*8 + 2*32 = 8 + 4 + 16 + 64 = 92 bits -> 12 bytes.
    w = _row(20, {0: 1.0, 19: 2.0})
    assert _bits(w, Spec("csr", index_bits=8)) == 92
    assert format_bytes(w, Spec("csr", index_bits=8)) == 12


@pytest.mark.parametrize(
    ("n", "col", "b", "entries"),
    [
        (16, 15, 4, 1),  # 15 zeros before it: fits (index 15), no filler
        (17, 16, 4, 2),  # 16 zeros: 1 filler (consumes 16 positions), then index 0
        (32, 31, 4, 2),  # 31 zeros: 1 filler, then index 15
        (33, 32, 4, 3),  # 32 zeros: 2 fillers, then index 0
        (41, 40, 2, 11),  # 40 zeros with b = 2: floor(40 / 4) = 10 fillers + the non-zero
    ],
)
def test_csr_filler_count_is_floor_of_zeros_over_2_to_b(
    n: int, col: int, b: int, entries: int
) -> None:
    # bits = 8 + 2 pointers * ceil(log2(E + 1)) + E * (b + 32)
    w = _row(n, {col: 3.0})
    ptr_width = int(entries).bit_length()
    assert _bits(w, Spec("csr", index_bits=b)) == 8 + 2 * ptr_width + entries * (b + 32)


def test_csr_trailing_zeros_and_empty_rows_cost_only_pointers() -> None:
    # 3 x 10, one non-zero at (1, 2); rows 0 and 2 empty. E = 1; 4 pointers of 1 bit.
    # 8 + 4*1 + 1*(4 + 32) = 48 bits.
    w = np.zeros((3, 10), dtype=np.float32)
    w[1, 2] = 5.0
    assert _bits(w, Spec("csr", index_bits=4)) == 48
    # All zero: E = 0, pointer width 0 -> only the 8-bit width field.
    assert _bits(np.zeros((3, 10), dtype=np.float32), Spec("csr")) == 8


def test_csc_counts_along_columns() -> None:
    # [[1, 0], [0, 0], [0, 2]]: column 0 -> row 0 (0 skipped); column 1 -> row 2 (2 skipped).
    # b = 2: 2 <= 3, no filler; E = 2; C + 1 = 3 pointers of ceil(log2 3) = 2 bits.
    # 8 + 3*2 + 2*2 + 2*32 = 8 + 6 + 4 + 64 = 82 bits.
    w = np.array([[1, 0], [0, 0], [0, 2]], dtype=np.float32)
    assert _bits(w, Spec("csc", index_bits=2)) == 82
    # As csr: rows 0 and 2 hold one each, row 2's non-zero skips 1 zero; 4 pointers of 2 bits.
    # 8 + 4*2 + 2*2 + 2*32 = 84 bits.
    assert _bits(w, Spec("csr", index_bits=2)) == 84


def test_bitmap_dense_and_value_encodings() -> None:
    # 4 x 5 = 20 positions, 3 non-zeros.
    w = np.zeros((4, 5), dtype=np.float32)
    w[0, 1], w[2, 3], w[3, 4] = 1.0, -2.0, 4.0
    assert _bits(w, Spec("bitmap")) == 20 + 3 * 32  # 116 bits
    assert format_bytes(w, Spec("bitmap")) == 15
    # int8: 8-bit codes + one fp32 scale per output channel (4 rows).
    assert _bits(w, Spec("bitmap", values="int8")) == 20 + 3 * 8 + 4 * 32  # 172
    # codebook q = 2: 2-bit codes + 2^2 fp32 entries (entry 0 is the zero).
    assert _bits(w, Spec("bitmap", values="codebook", codebook_bits=2)) == 20 + 3 * 2 + 4 * 32
    # dense: every position.
    assert _bits(w, Spec("dense")) == 20 * 32  # 640
    assert _bits(w, Spec("dense", values="int8")) == 20 * 8 + 4 * 32  # 288
    assert _bits(w, Spec("dense", values="codebook", codebook_bits=3)) == 20 * 3 + 8 * 32


def test_balanced_fc_with_padding() -> None:
    # (2, 20) FC, g = 8, axis "in": 2 lines of 20 -> ceil(20 / 8) = 3 groups each (the last
    # one padded with 4 zeros) -> 6 groups; k = 2; index width ceil(log2 8) = 3.
    # 6 * 2 * 3 + 6 * 2 * 32 = 36 + 384 = 420 bits -> 53 bytes.
    w = np.zeros((2, 20), dtype=np.float32)
    w[0, [0, 5, 9, 19]] = [1, 2, 3, 4]
    w[1, [16, 17]] = [5, 6]
    spec = Spec("balanced", group=8, k=2)
    assert _bits(w, spec) == 420
    assert format_bytes(w, spec) == 53
    # Inferred k = the most non-zeros in a group = 2 (groups 0..7 of row 0, 16..19 of row 1).
    assert encode(w, Spec("balanced", group=8)).spec.k == 2


def test_balanced_conv_axes_and_odd_group() -> None:
    w = np.zeros((4, 6, 3, 3), dtype=np.float32)
    w[0, 0, 0, 0] = 1.0
    # "in": lines = 4 outputs * 9 kernel positions = 36, 6 input channels -> 2 groups of 4
    # (the second padded by 2) -> 72 groups; k = 1; 2-bit indices: 72 * (2 + 32) = 2448 bits.
    assert _bits(w, Spec("balanced", group=4, k=1, axis="in")) == 72 * 34
    # "out": lines = 6 inputs * 9 = 54, 4 output channels -> 1 group each -> 54 groups.
    assert _bits(w, Spec("balanced", group=4, k=1, axis="out")) == 54 * 34
    # "flat": lines = 4 outputs, 54 weights each -> ceil(54 / 4) = 14 groups -> 56 groups.
    assert _bits(w, Spec("balanced", group=4, k=1, axis="flat")) == 56 * 34
    # g = 5 -> indices of ceil(log2 5) = 3 bits; "flat": ceil(54 / 5) = 11 -> 44 groups; int8:
    # 44 * 1 * (3 + 8) + 4 scales * 32 = 484 + 128 = 612 bits.
    assert _bits(w, Spec("balanced", group=5, k=1, axis="flat", values="int8")) == 612
