"""Fine-grained pruning: weight masks kept beside the weights, and the methods that set them."""

from prunewise.prune.fine.attach import (
    MaskSet,
    attach_masks,
    current_masks,
    make_permanent,
    maskable,
    prunable_weights,
)
from prunewise.prune.fine.config import (
    METHODS,
    Evaluate,
    Finetune,
    ScanRecord,
    SparsifyConfig,
    SparsifyResult,
    StageRecord,
    layer_sparsity,
    overall_sparsity,
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
from prunewise.prune.fine.methods import (
    Checkpoint,
    SparsifyState,
    dense_weights,
    pick_layers,
    scan_layer,
    sparsify,
)

__all__ = [
    "AXES",
    "METHODS",
    "Checkpoint",
    "Evaluate",
    "Finetune",
    "MaskSet",
    "ScanRecord",
    "SparsifyConfig",
    "SparsifyResult",
    "SparsifyState",
    "StageRecord",
    "attach_masks",
    "balanced_mask",
    "current_masks",
    "dense_weights",
    "global_magnitude_masks",
    "group_lengths",
    "group_nonzeros",
    "group_view",
    "layer_sparsity",
    "magnitude_mask",
    "make_permanent",
    "mask_sparsity",
    "maskable",
    "nm_mask",
    "overall_sparsity",
    "pick_layers",
    "prunable_weights",
    "scan_layer",
    "sparsify",
    "ungroup_view",
]
