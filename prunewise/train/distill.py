"""Knowledge distillation (Hinton et al.): the teacher's soft targets at temperature T + labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunewise.errors import PrunewiseError

__all__ = ["DistillConfig", "distillation_loss"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class DistillConfig:
    """loss = weight * T^2 * KL(p_teacher^T || p_student^T) + (1 - weight) * cross-entropy."""

    temperature: float = 4.0
    weight: float = 0.9

    def __post_init__(self) -> None:
        t, w = self.temperature, self.weight
        if not (_is_number(t) and math.isfinite(t) and t > 0):
            raise PrunewiseError(
                f"distillation temperature must be a finite number > 0, got {t!r}; "
                "4 is a common choice"
            )
        if not (_is_number(w) and 0 <= w <= 1):
            raise PrunewiseError(
                f"distillation weight must be in [0, 1], got {w!r}; it weighs the teacher's "
                "soft targets against the labels (0 = labels only, 1 = teacher only)"
            )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    config: DistillConfig,
) -> torch.Tensor:
    """The batch-mean distillation loss of `config` (no gradient flows into the teacher)."""
    if student_logits.shape != teacher_logits.shape:
        raise PrunewiseError(
            f"the teacher's outputs {tuple(teacher_logits.shape)} do not match the student's "
            f"{tuple(student_logits.shape)}; use a teacher trained on the same classes"
        )
    t = config.temperature
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student_logits, targets)
    return config.weight * t * t * kl + (1 - config.weight) * ce
