"""Training, fine-tuning (with optional distillation), resumable state and torchrun support."""

from prunewise.train.bn import batchnorms, recalibrate_bn, recalibrated_bn
from prunewise.train.distill import DistillConfig, distillation_loss
from prunewise.train.loop import (
    TrainConfig,
    TrainingDiverged,
    cosine_lr,
    epoch_seed,
    evaluate,
    slimming_step,
    train,
)
from prunewise.train.metrics import confusion_matrix, iou_percent, main_output, mean_iou
from prunewise.train.runtime import (
    DistContext,
    init_distributed,
    make_train_loader,
    pick_device,
    shutdown_distributed,
)
from prunewise.train.state import TRAIN_STATE_FORMAT, TrainState

__all__ = [
    "TRAIN_STATE_FORMAT",
    "DistContext",
    "DistillConfig",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "batchnorms",
    "confusion_matrix",
    "cosine_lr",
    "distillation_loss",
    "epoch_seed",
    "evaluate",
    "init_distributed",
    "iou_percent",
    "main_output",
    "make_train_loader",
    "mean_iou",
    "pick_device",
    "recalibrate_bn",
    "recalibrated_bn",
    "shutdown_distributed",
    "slimming_step",
    "train",
]
