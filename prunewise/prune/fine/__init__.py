"""Fine-grained pruning: weight masks (magnitude, balanced, N:M) kept beside the weights."""

from prunewise.prune.fine.attach import (
    MASKABLE,
    MaskSet,
    attach_masks,
    current_masks,
    make_permanent,
    prunable_weights,
)
from prunewise.prune.fine.groups import (
    AXES,
    group_lengths,
    group_nonzeros,
    group_view,
    ungroup_view,
)
from prunewise.prune.fine.masks import (
    balanced_mask,
    global_magnitude_masks,
    magnitude_mask,
    mask_sparsity,
    nm_mask,
)

__all__ = [
    "AXES",
    "MASKABLE",
    "MaskSet",
    "attach_masks",
    "balanced_mask",
    "current_masks",
    "global_magnitude_masks",
    "group_lengths",
    "group_nonzeros",
    "group_view",
    "magnitude_mask",
    "make_permanent",
    "mask_sparsity",
    "nm_mask",
    "prunable_weights",
    "ungroup_view",
]
