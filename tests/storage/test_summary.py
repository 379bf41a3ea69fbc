"""A model's storage plan: per-layer best format, totals, and a file that reads back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunewise.prune.fine import attach_masks, magnitude_mask, make_permanent
from prunewise.storage import Spec, format_bits, read_toc
from prunewise.storage.summary import model_weights, plan_storage, write_model


def _sparse_mlp(ratio: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 64))
    masks = {"0": magnitude_mask(model[0].weight, 0.5), "2": magnitude_mask(model[2].weight, ratio)}
    attach_masks(model, masks)
    make_permanent(model)
    return model


def test_plan_picks_the_smallest_candidate_and_counts_the_rest_dense() -> None:
    model = _sparse_mlp(0.95)
    weights, other = model_weights(model)
    assert other == (8 + 64) * 4  # the two biases, fp32
    summary = plan_storage(weights, other, values="int8")
    by_name = {r.name: r for r in summary.layers}
    fc = by_name["2"]
    assert fc.spec.format in ("csr", "csc", "bitmap")  # 95 % zeros: never dense
    for spec in (Spec("dense", values="int8"), Spec("bitmap", values="int8")):
        assert fc.bits <= format_bits(weights["2"], spec)
    assert summary.dense_bytes == sum(w.size * 4 for w in weights.values()) + other
    assert summary.compressed_bytes == sum(r.bytes for r in summary.layers) + other
    assert summary.ratio == pytest.approx(summary.dense_bytes / summary.compressed_bytes)
    assert summary.ratio > 8  # 95 % zeros and int8 values on the layer holding most weights
    record = summary.to_dict()
    assert record["layers"][1]["sparsity"] == pytest.approx(0.95, abs=1e-3)


def test_written_file_matches_the_counts_and_reads_back_exactly(tmp_path) -> None:
    weights, other = model_weights(_sparse_mlp(0.9))
    summary = plan_storage(weights, other, values="codebook", codebook_bits=4)
    size, stored, back = write_model(tmp_path / "m.pws", weights, summary)
    payload = sum(r.bytes for r in summary.layers)
    toc = read_toc(tmp_path / "m.pws")
    assert size == toc.header_bytes + payload  # the counts are the file, byte for byte
    assert [e.length for e in toc.entries] == [r.bytes for r in summary.layers]
    for r in summary.layers:
        w = weights[r.name]
        assert back[r.name].shape == w.shape
        assert np.array_equal(back[r.name], stored[r.name])  # read back as written
        assert np.array_equal(back[r.name] == 0, w == 0)  # zeros stay zeros
    replan = plan_storage(back, other, values="codebook", codebook_bits=4)
    again = write_model(tmp_path / "m2.pws", back, replan)[2]
    for name in back:
        assert np.array_equal(again[name], back[name])  # quantized values are a fixed point


@pytest.mark.parametrize("values", ["int8", "codebook", "fp32"])
def test_counts_equal_the_file_when_values_round_to_zero(tmp_path, values: str) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 128)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    w[:, :5] *= 1e-4  # stored as 0 by INT8 (scale = max / 127) and by a small codebook
    summary = plan_storage({"fc": w}, values=values, codebook_bits=2)
    size, _, back = write_model(tmp_path / "w.pws", {"fc": w}, summary)
    (row,) = summary.layers
    assert size == read_toc(tmp_path / "w.pws").header_bytes + row.bytes
    assert row.nonzeros == int(np.count_nonzero(back["fc"]))
    if values == "int8":
        assert row.nonzeros < int(np.count_nonzero(w))  # the tiny values dropped out
