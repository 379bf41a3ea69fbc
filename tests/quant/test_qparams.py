"""The quantization arithmetic on hand-checked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from prunewise.errors import PrunewiseError
from prunewise.quant import (
    Int8Config,
    Observer,
    affine_qparams,
    choose_qparams,
    histogram_range,
    pow2_candidates,
    quantization_mse,
    symmetric_qparams,
    weight_qparams,
)


def test_affine_uint8_for_a_relu_range() -> None:
    q = affine_qparams(0.0, 2.55, "uint8")
    assert q.scale == pytest.approx(0.01) and q.zero_point == 0


def test_affine_widens_to_hold_zero() -> None:
    q = affine_qparams(1.0, 3.0, "uint8")  # range becomes [0, 3]
    assert q.zero_point == 0 and q.scale == pytest.approx(3.0 / 255)
    q = affine_qparams(-3.0, -1.0, "uint8")  # range becomes [-3, 0]
    assert q.zero_point == 255 and q.scale == pytest.approx(3.0 / 255)


def test_affine_int8_symmetric_range() -> None:
    q = affine_qparams(-1.0, 1.0, "int8")  # scale 2/255; zp = round(-128 + 127.5) = 0 (to even)
    assert q.scale == pytest.approx(2 / 255) and q.zero_point == 0


def test_symmetric_and_pow2() -> None:
    q = symmetric_qparams(12.7)
    assert q.scale == pytest.approx(0.1) and q.zero_point == 0 and q.dtype == "int8"
    assert pow2_candidates(0.1) == (0.0625, 0.125)
    assert pow2_candidates(0.25) == (0.25, 0.25)


def test_weight_scales_per_channel_and_pow2() -> None:
    w = torch.zeros(3, 2, 1, 1)
    w[0, 0], w[1, 1], w[2, 0] = 1.27, -2.54, 0.3
    s = weight_qparams(w)
    assert torch.allclose(s, torch.tensor([0.01, 0.02, 0.3 / 127]))
    p2 = weight_qparams(w, power_of_two=True)
    assert all(math.log2(v) == round(math.log2(v)) for v in p2.tolist())
    # each chosen power of two is the floor or ceiling of the min-max scale
    for exact, chosen in zip(s.tolist(), p2.tolist(), strict=True):
        assert chosen in pow2_candidates(exact)


def test_histogram_percentile() -> None:
    hist = torch.zeros(100, dtype=torch.float64)
    hist[:99] = 1.0
    hist[99] = 0.001  # a thin tail in the last bin
    lo, hi = histogram_range(hist, 0.0, 100.0, 99.0)
    assert lo == 0.0 and hi == pytest.approx(99.0)


def _observed(x: torch.Tensor, cfg: Int8Config) -> Observer:
    obs = Observer(cfg.histogram_bins)
    obs(x)
    obs.collect_histogram = True
    obs(x)
    return obs


def test_percentile_clips_an_outlier_minmax_keeps_it() -> None:
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0)).abs()
    x[0] = 1000.0
    scales = {}
    for method in ("minmax", "percentile"):
        cfg = Int8Config(calibration=method)
        scales[method] = choose_qparams(_observed(x, cfg), cfg).scale
    assert scales["minmax"] == pytest.approx(1000.0 / 255)
    assert scales["percentile"] < scales["minmax"] / 50


def test_mse_clips_a_heavy_tail_and_lowers_the_error() -> None:
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,)).abs()
    errors, scales = {}, {}
    for method in ("minmax", "mse"):
        cfg = Int8Config(calibration=method)
        q = choose_qparams(_observed(x, cfg), cfg)
        scales[method] = q.scale
        errors[method] = float(quantization_mse(x, q.scale, q.zero_point, q.qmin, q.qmax))
    assert scales["mse"] < 0.95 * scales["minmax"]
    assert errors["mse"] < errors["minmax"]


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_power_of_two_activation_scales(method: str) -> None:
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 3
    cfg = Int8Config(calibration=method, power_of_two=True)
    q = choose_qparams(_observed(x, cfg), cfg)
    assert q.zero_point == 0 and q.dtype == "int8"
    assert math.log2(q.scale) == round(math.log2(q.scale))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"calibration": "kl"}, "must be one of minmax, percentile, mse, got 'kl'"),
        (
            {"calibration_images": 4},
            "calibration_images (--calibration-images) must be an integer in [16,",
        ),
        ({"percentile": 30.0}, "percentile (--percentile) must be a number in (50, 100]"),
        ({"activation_dtype": "int4"}, "activation_dtype must be one of uint8, int8"),
        ({"power_of_two": "yes"}, "power_of_two (--power-of-two) must be true or false, got 'yes'"),
        ({"histogram_bins": 3}, "histogram_bins must be an integer in [16,"),
        ({"weight_bits": 9}, "weight_bits (--weight-bits) must be an integer in [2, 8] or unset"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(PrunewiseError, match=None) as err:
        Int8Config(**kwargs)
    assert message in str(err.value)
