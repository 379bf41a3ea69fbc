"""Scores of a model on a loader: the main output of a model, and mean IoU for segmentation."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from prunewise.errors import PrunewiseError

__all__ = ["SAME_SIZE", "confusion_matrix", "iou_percent", "main_output", "mean_iou"]


SAME_SIZE = (
    "a segmentation model gives maps of its input's size; upsample its logits in its forward "
    "(F.interpolate(logits, size=x.shape[-2:], mode='bilinear'), as torchvision's models do)"
)
"""How a message asks for class maps the size of the images."""


def main_output(out: object, *, training: bool = False) -> torch.Tensor:
    """The tensor a model's output is scored on: the tensor itself, or the "out" entry of a
    dict (torchvision's segmentation models; "aux" is a training aid); with `training`, also
    the first tensor of a tuple (an auxiliary head's output beside it in train mode, as
    torchvision's Inception-V3 and GoogLeNet give: the auxiliary heads get no loss). Raises
    PrunewiseError for any other output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("out"), torch.Tensor):
        return out["out"]
    if training and isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    kind = f"a dict with keys {sorted(out)}" if isinstance(out, Mapping) else type(out).__name__
    raise PrunewiseError(
        f"the model returns {kind}; prunewise scores a tensor or a dict's 'out' entry: wrap "
        "it in a module whose forward returns the class scores"
    )


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) int64 counts: row = true class, column = predicted; targets outside
    [0, classes) (ignored pixels) are not counted. Raises PrunewiseError when the predicted
    maps (N, H, W) are not the size of the targets'."""
    if pred.shape != target.shape:
        raise PrunewiseError(
            f"the model's class maps are {' x '.join(map(str, pred.shape[-2:]))}, the masks "
            f"{' x '.join(map(str, target.shape[-2:]))}: {SAME_SIZE}"
        )
    keep = (target >= 0) & (target < classes)
    index = target[keep] * classes + pred[keep]
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def mean_iou(
    model: nn.Module, loader: DataLoader, classes: int, device: torch.device | None = None
) -> float:
    """Mean intersection over union in percent, over the classes present in the targets or
    the predictions (IoU = TP / (TP + FP + FN), per class, from the summed confusion matrix)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(classes, classes, dtype=torch.int64)
    with torch.no_grad():
        for x, y in loader:
            pred = main_output(model(x.to(device))).argmax(dim=1).cpu()
            total += confusion_matrix(pred, y, classes)
    model.train(was_training)
    return iou_percent(total)


def iou_percent(total: torch.Tensor) -> float:
    """Mean IoU in percent of a summed (classes, classes) confusion matrix, over the classes
    present in the targets or the predictions. Raises PrunewiseError for an empty matrix."""
    if total.sum() == 0:
        raise PrunewiseError("cannot score segmentation on an empty dataset (or all ignored)")
    tp = total.diag().double()
    union = total.sum(0).double() + total.sum(1).double() - tp
    seen = union > 0
    return float(100.0 * (tp[seen] / union[seen]).mean())
