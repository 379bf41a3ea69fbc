"""The task side of the iterative job: what makes a baseline, fine-tunes and scores a model.

The loop of `pipeline/run.py` prunes, checkpoints and decides; a `Work` does the rest.
`ClassifierWork` is prunewise's own (its classification trainer on the run's data); the Python
API's `UserWork` (`pipeline/custom.py`) calls the user's fine-tune and evaluate instead.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from prunewise.data import DataBundle, make_loader, sample_images
from prunewise.graph import build_channel_graph
from prunewise.io import load_checkpoint
from prunewise.models.bring import Brought, bring_model, on_meta
from prunewise.pipeline.config import RunConfig
from prunewise.records import RunFolder, epoch_score, scores_meta
from prunewise.records.deploy import MIOU
from prunewise.train import (
    DistContext,
    DistillConfig,
    TrainingDiverged,
    TrainState,
    evaluate,
    iou_percent,
    make_train_loader,
    mean_iou,
    train,
)

__all__ = ["ACCURACY", "ClassifierWork", "SegmentationWork", "Work", "bring_configured"]

ACCURACY = "accuracy"
"""The metric of prunewise's own classification work (top-1, in percent)."""


class Work(Protocol):
    """What the iterative job asks of its task.

    `metric` names the score (higher is better) that the tolerance, the summary and the
    report use; `unit` is shown after its values ("%" for accuracy, "" for most others).
    """

    metric: str
    unit: str

    def baseline(self, state: Path) -> tuple[nn.Module, dict[str, Any]]:
        """The unpruned model (on its device) and what metrics.json records of its making;
        training it, if it needs that, saves to and resumes from `state`."""
        ...

    def fit(
        self, k: int, model: nn.Module, epochs: int, teacher: nn.Module | None, state: Path
    ) -> list[dict[str, Any]]:
        """Train `model` in place for `epochs` (continuing from `state` when it exists, saving
        there after each epoch); returns one record per epoch (may be empty)."""
        ...

    def score(self, model: nn.Module) -> tuple[float, float | None]:
        """(the score the tolerance is checked on, a held-out test score or None)."""
        ...

    def images(self) -> torch.Tensor:
        """Inputs to measure each convolution's input sparsity on (paper A eq. 1)."""
        ...

    def scores_meta(self, val: float, test: float | None) -> dict[str, Any]:
        """How a checkpoint's metadata records the scores."""
        ...


def bring_configured(config: RunConfig, data: DataBundle, *, meta: bool = False) -> Brought:
    """The model of the config for this data (on the meta device when `meta` and nothing is
    to be loaded into it: shapes only, nothing allocated; `prunewise.models.bring.on_meta`)."""
    spec = config.model

    def bring() -> Brought:
        return bring_model(
            spec.name,
            num_classes=data.num_classes,
            in_channels=data.input_shape[0],
            width=spec.width,
            model_args=spec.args,
            weights=spec.weights,
            new_head=spec.new_head,
            trust_pickle=spec.trust_pickle,
        )

    return on_meta(bring) if meta and spec.weights is None else bring()


@dataclass
class ClassifierWork:
    """prunewise's classification trainer and top-1 accuracy on the run's data."""

    config: RunConfig
    data: DataBundle
    device: torch.device
    dist: DistContext
    log: logging.Logger
    metric: str = ACCURACY
    unit: str = "%"

    def __post_init__(self) -> None:
        self.loaders: dict[str, DataLoader] = {
            "val": make_loader(self.data.val, 512, shuffle=False),
            "test": make_loader(self.data.test, 512, shuffle=False),
        }

    def baseline(self, state: Path) -> tuple[nn.Module, dict[str, Any]]:
        """The baseline checkpoint, the model with the user's weights, or a model trained here
        (from the user's weights but the head with --new-head; resumable from `state`). What
        it records includes the score of guessing, "chance" (`chance`)."""
        spec = self.config.model
        guess = {"chance": self.chance()}
        if spec.baseline is not None:
            self.log.info(f"baseline: loaded {spec.baseline}")
            model = load_checkpoint(spec.baseline).model.to(self.device)
            return model, {"source": str(spec.baseline), "epochs": [], **guess}
        if spec.weights is not None and not spec.new_head:
            brought = bring_configured(self.config, self.data)
            where = f" ({brought.weights.where})" if brought.weights is not None else ""
            self.log.info(f"baseline: {spec.name} with the weights of {spec.weights}{where}")
            return brought.model.to(self.device), {
                "source": str(spec.weights),
                "epochs": [],
                **guess,
            }
        torch.manual_seed(self.config.train.seed)
        model = bring_configured(self.config, self.data).model.to(self.device)
        build_channel_graph(model, tuple(self.data.input_shape))  # refuse before training
        made: dict[str, Any] = dict(guess)
        if spec.weights:  # with --new-head
            self.log.info(f"baseline: {spec.name} from {spec.weights}, a new head trained")
            made["source"] = str(spec.weights)
        made["epochs"] = self.fit(0, model, self.config.train.epochs, None, state)
        return model, made

    def chance(self) -> float:
        """The top-1 accuracy of guessing: 100 / classes (%)."""
        return 100.0 / self.data.num_classes

    def fit(
        self, k: int, model: nn.Module, epochs: int, teacher: nn.Module | None, state: Path
    ) -> list[dict[str, Any]]:
        """prunewise's trainer, resumable epoch by epoch from `state` (a TrainState)."""
        desc = "baseline" if k == 0 else f"iter {k} fine-tune"
        resume = TrainState.load(state) if state.is_file() else None
        if resume is not None:
            self.log.info(f"{desc}: resuming after epoch {resume.epochs_done}/{epochs}")
        distill = None
        if teacher is not None:
            ft = self.config.finetune
            distill = DistillConfig(temperature=ft.temperature, weight=ft.weight)

        def on_epoch(done: TrainState) -> None:
            done.save(state)
            last = done.history[-1]
            score = epoch_score(last)
            val = f", val {score:.2f} %" if score is not None else ""
            self.log.info(f"{desc} epoch {done.epochs_done}/{epochs}: loss {last['loss']:.4f}{val}")

        cfg = self.config.train
        # each stage shuffles with its own seed, far from the sampler's seed + epoch of the others
        loader = make_train_loader(
            self.data.train, self.config.batch_size, seed=cfg.seed + 1000 * k, dist=self.dist
        )
        settings = dataclasses.replace(
            cfg,
            epochs=epochs,
            seed=cfg.seed + k,
            device=str(self.device),
            progress=cfg.progress and self.dist.is_main,
        )
        try:
            return train(
                model,
                loader,
                settings,
                val_loader=self.epoch_val_loader,
                teacher=teacher,
                distill=distill,
                resume=resume,
                on_epoch=on_epoch if self.dist.is_main else None,
                desc=desc,
                dist=self.dist,
            )
        except TrainingDiverged as exc:
            if k == 0:
                raise
            baseline = RunFolder(state.parent.parent).file(0, "model.pt")  # state: RUN/iter_k/
            raise TrainingDiverged(
                f"{exc}; a resumed run repeats it: start a new run from the trained baseline, "
                f"prunewise run --baseline {baseline} --lr LOWER --out NEW_DIR (with this "
                "run's other options)"
            ) from exc

    @property
    def epoch_val_loader(self) -> DataLoader | None:
        """What the trainer scores after each epoch (top-1 on the validation split)."""
        return self.loaders["val"]

    def score(self, model: nn.Module) -> tuple[float, float | None]:
        """Top-1 accuracy (%) on the validation and the test split."""
        val = evaluate(model, self.loaders["val"], self.device)
        return val, evaluate(model, self.loaders["test"], self.device)

    def images(self) -> torch.Tensor:
        """`analysis_images` validation images, drawn with the run's seed."""
        n = min(self.config.analysis_images, len(self.data.val))
        return sample_images(self.data.val, n, self.config.train.seed).to(self.device)

    def scores_meta(self, val: float, test: float | None) -> dict[str, Any]:
        """The scores as checkpoints of `prunewise train` have them."""
        return scores_meta(val, test)


@dataclass
class SegmentationWork(ClassifierWork):
    """prunewise's trainer with per-pixel cross-entropy (dict outputs: their "out"), scored by
    mean IoU (%) on the validation and the test split."""

    metric: str = "mIoU"
    unit: str = "%"

    @property
    def epoch_val_loader(self) -> DataLoader | None:
        """None: the trainer's per-epoch score is top-1; mIoU is taken once per stage."""
        return None

    def chance(self) -> float:
        """The validation mIoU (%) of a model that says the most frequent class everywhere
        (what an untrained segmentation model often does)."""
        classes = self.data.num_classes
        counts = torch.zeros(classes, dtype=torch.int64)
        for _, masks in self.loaders["val"]:
            kept = masks[(masks >= 0) & (masks < classes)]
            counts += torch.bincount(kept.flatten(), minlength=classes)
        confusion = torch.zeros(classes, classes, dtype=torch.int64)
        confusion[:, int(counts.argmax())] = counts  # every target pixel predicted as it
        return iou_percent(confusion)

    def score(self, model: nn.Module) -> tuple[float, float | None]:
        """Mean IoU (%) on the validation and the test split."""
        classes = self.data.num_classes
        val = mean_iou(model, self.loaders["val"], classes, self.device)
        return val, mean_iou(model, self.loaders["test"], classes, self.device)

    def scores_meta(self, val: float, test: float | None) -> dict[str, Any]:
        """val_miou and test_miou."""
        return scores_meta(val, test, MIOU)
