"""BN folding and INT8 post-training quantization (per-channel weights, calibrated activations)."""

from prunewise.quant.calibrate import Observer, choose_qparams, histogram_range
from prunewise.quant.config import (
    CALIBRATION_METHODS,
    MIN_CALIBRATION_IMAGES,
    Int8Config,
    calibration_shortfall,
)
from prunewise.quant.fold import fold_batchnorm, unfolded_batchnorms
from prunewise.quant.qparams import (
    QParams,
    affine_qparams,
    pow2_candidates,
    quantization_mse,
    symmetric_qparams,
    weight_qparams,
)
from prunewise.quant.quantize import (
    QUANT_SPEC_FORMAT,
    FakeQuant,
    QuantizedModel,
    QuantSpec,
    apply_spec,
    quantize,
)
from prunewise.quant.rules import QuantPoint, QuantRule, find_points, register_quant_rule

__all__ = [
    "CALIBRATION_METHODS",
    "MIN_CALIBRATION_IMAGES",
    "QUANT_SPEC_FORMAT",
    "FakeQuant",
    "Int8Config",
    "Observer",
    "QParams",
    "QuantPoint",
    "QuantRule",
    "QuantSpec",
    "QuantizedModel",
    "affine_qparams",
    "apply_spec",
    "calibration_shortfall",
    "choose_qparams",
    "find_points",
    "fold_batchnorm",
    "histogram_range",
    "pow2_candidates",
    "quantization_mse",
    "quantize",
    "register_quant_rule",
    "symmetric_qparams",
    "unfolded_batchnorms",
    "weight_qparams",
]
