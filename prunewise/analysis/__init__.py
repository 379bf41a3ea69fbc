"""Measure a model: input sparsity, |gamma|, parameters and FLOPs."""

from prunewise.analysis.counting import count_flops, count_params, layer_flops
from prunewise.analysis.group_experiment import group_experiment
from prunewise.analysis.importance import IMPORTANCES, group_gamma, group_importance
from prunewise.analysis.prunability import Blocker, Prunability, prunability
from prunewise.analysis.sparsity import (
    GroupStats,
    LayerSparsity,
    ModelAnalysis,
    analyze,
    measure_zeros,
)

__all__ = [
    "IMPORTANCES",
    "Blocker",
    "GroupStats",
    "LayerSparsity",
    "ModelAnalysis",
    "Prunability",
    "analyze",
    "count_flops",
    "count_params",
    "group_experiment",
    "group_gamma",
    "group_importance",
    "layer_flops",
    "measure_zeros",
    "prunability",
]
