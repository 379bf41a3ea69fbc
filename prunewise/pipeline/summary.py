"""The per-iteration table of a run, from its folder alone."""

from __future__ import annotations

from typing import Any

from torch import nn

from prunewise.pipeline.config import RunConfig
from prunewise.pipeline.folder import RunFolder

__all__ = ["STOP_REASONS", "kept_iteration", "layer_channels", "summarize"]

STOP_REASONS = ("tolerance", "max_iterations", "nothing_to_prune")


def layer_channels(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every convolution and linear layer, by module name."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
    return out


def kept_iteration(rows: list[dict[str, Any]]) -> int:
    """The last iteration within tolerance before the first one that is not (0: the baseline)."""
    kept = 0
    for r in rows:
        if not r["within_tolerance"]:
            break
        kept = r["iteration"]
    return kept


def _reduction(before: float, after: float) -> float:
    return 1.0 - after / before if before else 0.0


def summarize(folder: RunFolder, config: RunConfig, stopped: str) -> dict[str, Any]:
    """summary.json of docs/run-folder.md from the finished stages' metrics."""
    if stopped not in STOP_REASONS:
        raise ValueError(f"stopped must be one of {STOP_REASONS}, got {stopped!r}")
    base = folder.metrics(0) or {}
    keys = ("params", "flops", "val_acc", "test_acc")
    rows = []
    channels = {name: [n] for name, n in base.get("channels", {}).items()}
    for k in folder.finished_iterations():
        m = folder.metrics(k) or {}
        rows.append(
            {
                "iteration": k,
                **{key: m[key] for key in keys},
                "params_reduction": _reduction(base["params"], m["params"]),
                "flops_reduction": _reduction(base["flops"], m["flops"]),
                "val_acc_pruned": m.get("val_acc_pruned"),
                "within_tolerance": bool(m.get("within_tolerance")),
            }
        )
        for name, n in m.get("channels", {}).items():
            channels.setdefault(name, []).append(n)
    return {
        "baseline": {key: base.get(key) for key in keys},
        "iterations": rows,
        "kept": kept_iteration(rows),
        "stopped": stopped,
        "tolerance": config.tolerance,
        "distill": config.finetune.teacher if config.finetune.distill else None,
        "channels": channels,
    }
