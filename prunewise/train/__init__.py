"""Training, fine-tuning and evaluation."""

from prunewise.train.loop import TrainConfig, evaluate, pick_device, train

__all__ = ["TrainConfig", "evaluate", "pick_device", "train"]
