"""Knowledge distillation (Hinton et al.): the teacher's soft targets at temperature T + labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from prunewise.errors import PrunewiseError
from prunewise.settings import Settings, setting

__all__ = ["DistillConfig", "distillation_loss"]


@dataclass(frozen=True)
class DistillConfig(Settings):
    """loss = weight * T^2 * KL(p_teacher^T || p_student^T) + (1 - weight) * cross-entropy."""

    section: ClassVar[str] = "finetune"

    temperature: float = setting(
        4.0,
        "distillation temperature T",
        low=0,
        high=100,
        low_open=True,
        flag="--temperature",
    )
    weight: float = setting(
        0.9,
        "weight of the teacher's soft targets (KL term); cross-entropy gets the rest",
        low=0,
        high=1,
        flag="--distill-weight",
    )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    config: DistillConfig,
) -> torch.Tensor:
    """The distillation loss of `config`, averaged over images (and pixels, for logits
    (N, C, H, W) of segmentation); no gradient flows into the teacher."""
    if student_logits.shape != teacher_logits.shape:
        raise PrunewiseError(
            f"the teacher's outputs {tuple(teacher_logits.shape)} do not match the student's "
            f"{tuple(student_logits.shape)}; use a teacher trained on the same classes"
        )
    t = config.temperature
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    positions = student_logits.numel() // student_logits.shape[1]  # images (x pixels)
    kl = F.kl_div(log_student, log_teacher, reduction="sum", log_target=True) / positions
    ce = F.cross_entropy(student_logits, targets)
    return config.weight * t * t * kl + (1 - config.weight) * ce
