"""Measure a model: input sparsity, |gamma|, parameters and FLOPs."""

from prunewise.analysis.counting import count_flops, count_params, layer_flops
from prunewise.analysis.group_experiment import group_experiment
from prunewise.analysis.sparsity import (
    GroupStats,
    LayerSparsity,
    ModelAnalysis,
    analyze,
    group_gamma,
    measure_zeros,
)

__all__ = [
    "GroupStats",
    "LayerSparsity",
    "ModelAnalysis",
    "analyze",
    "count_flops",
    "count_params",
    "group_experiment",
    "group_gamma",
    "layer_flops",
    "measure_zeros",
]
