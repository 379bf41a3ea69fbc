"""Structured pruning: policies decide which channels go, surgery removes them."""

from prunewise.prune.plan import GroupDecision, PruningPlan
from prunewise.prune.policy import (
    POLICIES,
    RefinedConfig,
    channels_to_keep,
    check_gamma,
    decide,
    refined_plan,
    uniform_keep,
    uniform_plan,
)
from prunewise.prune.scope import get_scope, load_outside, outside_state, replace_scope
from prunewise.prune.surgery import apply_plan, inexact_groups, inexact_warning, zeroed_copy

__all__ = [
    "POLICIES",
    "GroupDecision",
    "PruningPlan",
    "RefinedConfig",
    "apply_plan",
    "channels_to_keep",
    "check_gamma",
    "decide",
    "get_scope",
    "inexact_groups",
    "inexact_warning",
    "load_outside",
    "outside_state",
    "refined_plan",
    "replace_scope",
    "uniform_keep",
    "uniform_plan",
    "zeroed_copy",
]
