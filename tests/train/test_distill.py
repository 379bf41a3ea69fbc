"""Distillation: the loss formula, its limits, and a student that learns its teacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prunewise.data import TensorImages
from prunewise.errors import PrunewiseError
from prunewise.train import DistillConfig, TrainConfig, distillation_loss, make_train_loader, train

CONFIG = TrainConfig(epochs=2, lr=0.05, lr_min=1e-3, seed=3, device="cpu", progress=False)


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_loss_matches_the_formula_by_hand() -> None:
    student = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]]
    teacher = [[0.0, 1.0, 3.0], [1.0, 1.0, 1.0]]
    targets = [2, 0]
    t, w = 2.0, 0.25
    kl = ce = 0.0
    for s_row, t_row, y in zip(student, teacher, targets, strict=True):
        p_t, p_s = _softmax(t_row, t), _softmax(s_row, t)
        kl += sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))
        ce -= math.log(_softmax(s_row, 1.0)[y])
    expected = w * t * t * kl / 2 + (1 - w) * ce / 2
    got = distillation_loss(
        torch.tensor(student, dtype=torch.float64),
        torch.tensor(teacher, dtype=torch.float64),
        torch.tensor(targets),
        DistillConfig(temperature=t, weight=w),
    )
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_loss_limits() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    ce = F.cross_entropy(s, y)
    assert torch.equal(distillation_loss(s, t, y, DistillConfig(weight=0.0)), ce)
    same = distillation_loss(s, s, y, DistillConfig(weight=1.0))
    assert float(same) == pytest.approx(0, abs=1e-6)
    student = s.clone().requires_grad_(True)
    teacher = t.clone().requires_grad_(True)
    distillation_loss(student, teacher, y, DistillConfig()).backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(PrunewiseError, match="same classes"):
        distillation_loss(s, torch.randn(5, 3), y, DistillConfig())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"weight": 1.5}, "weight"),
        ({"weight": -0.1}, "weight"),
        ({"weight": "0.5"}, "weight"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(PrunewiseError, match=match):
        DistillConfig(**kwargs)


def test_weight_zero_is_plain_cross_entropy(make_model, make_images) -> None:
    data = make_images(64)
    plain, distilled = make_model(seed=1), make_model(seed=1)
    h_plain = train(plain, make_train_loader(data, 16, seed=0), CONFIG)
    h_dist = train(
        distilled,
        make_train_loader(data, 16, seed=0),
        CONFIG,
        teacher=make_model(seed=2),
        distill=DistillConfig(temperature=3.0, weight=0.0),
    )
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(distilled.state_dict()[k], v, rtol=0, atol=1e-6)
    assert [m["loss"] for m in h_dist] == pytest.approx([m["loss"] for m in h_plain], abs=1e-6)


def _outputs(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    p, q = F.log_softmax(teacher_logits, 1), F.log_softmax(student_logits, 1)
    return float(F.kl_div(q, p, reduction="batchmean", log_target=True))


def test_student_moves_toward_teacher(make_model, make_images) -> None:
    data = make_images(96, augment=False)
    x = torch.stack([data[i][0] for i in range(len(data))])
    shifted = TensorImages(data.images, (data.all_labels + 1) % 3, data.view)
    teacher = make_model(seed=5)  # a teacher with its own opinion: label + 1 (mod 3)
    fast = TrainConfig(epochs=8, lr=0.2, lr_min=1e-3, seed=0, device="cpu", progress=False)
    train(teacher, make_train_loader(shifted, 16, seed=1), fast)
    teacher_logits = _outputs(teacher, x)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, control = make_model(seed=6), make_model(seed=6)
    before = _kl(teacher_logits, _outputs(student, x))
    config = TrainConfig(epochs=6, lr=0.1, lr_min=1e-3, seed=0, device="cpu", progress=False)
    train(
        student,
        make_train_loader(data, 16, seed=0),
        config,
        teacher=teacher,
        distill=DistillConfig(temperature=2.0, weight=1.0),
    )
    train(control, make_train_loader(data, 16, seed=0), config)
    student_logits, control_logits = _outputs(student, x), _outputs(control, x)
    assert _kl(teacher_logits, student_logits) < 0.5 * before
    assert _kl(teacher_logits, student_logits) < 0.5 * _kl(teacher_logits, control_logits)
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
    agree_control = (control_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
    assert agree > 0.6 > 0.3 > agree_control
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training


def test_default_distill_config_when_only_a_teacher(make_model, make_images) -> None:
    data = make_images(32)
    implicit, explicit = make_model(seed=1), make_model(seed=1)
    teacher = make_model(seed=2)
    train(implicit, make_train_loader(data, 16, seed=0), CONFIG, teacher=teacher)
    train(
        explicit,
        make_train_loader(data, 16, seed=0),
        CONFIG,
        teacher=teacher,
        distill=DistillConfig(),
    )
    assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in implicit.state_dict().items())


def test_bad_teacher_setups(make_model, make_images) -> None:
    loader = make_train_loader(make_images(32), 16, seed=0)
    model = make_model()
    with pytest.raises(PrunewiseError, match="without a teacher"):
        train(model, loader, CONFIG, distill=DistillConfig())
    with pytest.raises(PrunewiseError, match="same classes"):
        train(model, loader, CONFIG, teacher=make_model(num_classes=5))
    with pytest.raises(PrunewiseError, match="separate copy"):
        train(model, loader, CONFIG, teacher=model)
