"""The per-iteration summary of a run, from its folder alone."""

from __future__ import annotations

from torch import nn

from prunewise.pipeline.config import RunConfig
from prunewise.records import RunFolder, Summary, summarize_stages

__all__ = ["layer_channels", "summarize"]


def layer_channels(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every convolution and linear layer, by module name."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
    return out


def summarize(
    folder: RunFolder, config: RunConfig, stopped: str, *, metric: str = "accuracy", unit: str = "%"
) -> Summary:
    """summary.json of docs/run-folder.md from the finished stages' metrics."""
    return summarize_stages(
        folder.finished_metrics(0),
        [folder.finished_metrics(k) for k in folder.finished_iterations()],
        stopped=stopped,
        tolerance=config.tolerance,
        distill=config.finetune.teacher if config.finetune.distill else None,
        metric=metric,
        unit=unit,
    )
