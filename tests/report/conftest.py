"""A fake but consistent run folder (docs/run-folder.md), written by hand from seeded numbers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CONV = [16, 16, 32, 32, 64, 64, 128, 128, 128, 128]
LAYERS = [f"features.{i}" for i in (0, 3, 7, 10, 14, 17, 21, 24, 28, 31)] + ["head.0", "head.3"]
WIDTHS = [*CONV, 128, 128]  # out channels of LAYERS; head.6 (10 classes) stays whole
BASE = {"params": 623_706, "flops": 14_462_848, "val_acc": 91.2, "test_acc": 90.8}
# per iteration: fraction of channels kept, val, test, val right after pruning
ITERS = [(0.75, 91.0, 90.5, 84.1), (0.56, 90.1, 89.9, 80.3), (0.42, 88.9, 88.2, 70.2)]
TOLERANCE = 1.5


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _channels(frac: float) -> dict[str, int]:
    out = {name: max(2, round(w * frac)) for name, w in zip(LAYERS, WIDTHS, strict=True)}
    return {**out, "head.6": 10}


def _analysis(frac: float, seed: int, images: int = 100) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    chans = _channels(frac)
    ins = [1, *(chans[n] for n in LAYERS)]
    consumers = [*LAYERS, "head.6"]
    layers = []
    for i, (name, c) in enumerate(zip(consumers, ins, strict=True)):
        mean = 0.0 if i == 0 else float(rng.uniform(0.25, 0.75))
        std = 0.0 if i == 0 else float(mean * rng.uniform(0.02, 0.25))
        cv = None if i == 0 else std / mean
        layers.append(
            {
                "module": name,
                "channels": c,
                "sparsity_mean": mean,
                "sparsity_std": std,
                "sparsity_cv": cv,
            }
        )
    groups = [
        {
            "group": "x",
            "channels": 1,
            "prunable": False,
            "tied": False,
            "blocked": "model input",
            "sparsity_mean": 0.0,
            "sparsity_std": 0.0,
            "sparsity_cv": None,
            "gamma_min": None,
            "gamma_mean": None,
            "gamma_max": None,
            "gamma": None,
            "ratio": 0.0,
            "kept": 1,
            "decision": "fixed: model input",
        }
    ]
    for name, layer in zip(LAYERS, layers[1:], strict=True):
        n = chans[name]
        gamma = np.abs(rng.gamma(2.0, 0.25, size=n)) + 0.01
        s = layer["sparsity_mean"]
        ratio = s if s <= 0.5 else 0.5 * s
        groups.append(
            {
                "group": name,
                "channels": n,
                "prunable": True,
                "tied": False,
                "blocked": None,
                "sparsity_mean": s,
                "sparsity_std": layer["sparsity_std"],
                "sparsity_cv": layer["sparsity_cv"],
                "gamma_min": float(gamma.min()),
                "gamma_mean": float(gamma.mean()),
                "gamma_max": float(gamma.max()),
                "gamma": [float(v) for v in gamma],
                "ratio": ratio,
                "kept": max(2, n - int(n * ratio)),
                "decision": f"eq4: S={s:.3f} -> P={ratio:.3f}",
            }
        )
    return {
        "input_shape": [1, 32, 32],
        "images": images,
        "params": int(BASE["params"] * frac**2),
        "flops": int(BASE["flops"] * frac**2),
        "flops_convention": "multiply-accumulates per image (fvcore convention)",
        "layers": layers,
        "groups": groups,
        "policy": None,
    }


def _config(teacher: str = "none") -> dict[str, Any]:
    return {
        "format": "prunewise-run/1",
        "model": {"name": "vgg13_bn_small", "width": 0.25, "baseline": None},
        "data": {"name": "fashion-mnist", "data_dir": None, "val_size": 5000, "seed": 0},
        "policy": {
            "alpha": 0.5,
            "beta": 0.5,
            "policy": "eq4",
            "min_channels": 2,
            "round_to": 1,
            "reference_compat": False,
            "min_sparsity": 0.0,
            "prune_tied": False,
        },
        "train": {"epochs": 2, "lr": 0.01, "lr_min": 1e-5, "seed": 0, "device": "auto"},
        "finetune": {"epochs": 1, "teacher": teacher, "temperature": 4.0, "weight": 0.9},
        "batch_size": 128,
        "tolerance": TOLERANCE,
        "max_iterations": 4,
        "analysis_images": 100,
        "group_experiment": 50,
    }


def iteration_metrics(k: int) -> dict[str, Any]:
    """metrics.json of finished iteration k (1-based), as the pipeline writes it."""
    frac, val, test, pruned = ITERS[k - 1]
    return {
        "stage": f"iter_{k:02d}",
        "iteration": k,
        "done": True,
        "params": int(BASE["params"] * frac**2),
        "flops": int(BASE["flops"] * frac**2),
        "val_acc": val,
        "test_acc": test,
        "val_acc_pruned": pruned,
        "distill": None,
        "epochs": [{"epoch": 1, "loss": 0.4, "val_acc": val, "lr": 1e-5, "seconds": 3.0}],
        "within_tolerance": val >= BASE["val_acc"] - TOLERANCE,
        "seconds": 12.0,
        "channels": _channels(frac),
    }


def deploy_record(float_ms: float, int8_ms: float, acc: float) -> dict[str, Any]:
    """deploy.json as the deploy stage writes it (2 threads, batch 1 and 32)."""

    def grid(ms: float) -> list[dict[str, Any]]:
        return [
            {"batch": b, "threads": 2, "median_ms": ms * b / 4 if b > 1 else ms,
             "p10_ms": ms, "p90_ms": ms, "runs": 30, "fps": 1000 / ms}
            for b in (1, 32)
        ]  # fmt: skip

    return {
        "input_shape": [1, 32, 32],
        "config": {"int8": {"calibration": "percentile", "calibration_images": 256}},
        "images": 10000,
        "bytes": {"float": 2_500_000, "int8": 700_000},
        "accuracy": {
            "pytorch_float": acc,
            "pytorch_int8": acc - 0.1,
            "ort_float": acc,
            "ort_int8": acc - 0.2,
        },
        "parity": {
            "float_max_rel_error": 1e-6,
            "float_ok": True,
            "int8_top1_agreement": 0.998,
            "int8_ok": True,
        },
        "latency": {"float": grid(float_ms), "int8": grid(int8_ms)},
    }


def write_run(
    root: Path,
    *,
    iterations: int = 3,
    finished: bool = True,
    pending: int | None = None,
    gap: int | None = None,
    group_experiment: bool = True,
    teacher: str = "none",
) -> Path:
    """A run folder: baseline, `iterations` finished iterations (iteration `gap` has no folder),
    iteration `pending` started but not fine-tuned, summary.json when `finished`."""
    _dump(root / "config.json", _config(teacher))
    (root / "run.log").write_text("fake log\n")
    base = {
        "stage": "baseline",
        "iteration": 0,
        "done": True,
        **BASE,
        "distill": None,
        "epochs": [],
        "seconds": 30.0,
        "channels": _channels(1.0),
    }
    _dump(root / "baseline" / "metrics.json", base)
    _dump(root / "baseline" / "analysis.json", _analysis(1.0, 0))
    (root / "baseline" / "model.pt").write_bytes(b"not a real checkpoint")
    for k in range(1, iterations + 1):
        if k == gap:
            continue
        stage = root / f"iter_{k:02d}"
        _dump(stage / "analysis.json", _analysis(ITERS[k - 2][0] if k > 1 else 1.0, k))
        _dump(stage / "plan.json", {"format": "prunewise-plan/1", "groups": []})
        _dump(stage / "metrics.json", iteration_metrics(k))
        (stage / "model.pt").write_bytes(b"not a real checkpoint")
    if pending is not None:
        stage = root / f"iter_{pending:02d}"
        _dump(stage / "analysis.json", _analysis(0.5, pending))
        _dump(stage / "plan.json", {"format": "prunewise-plan/1", "groups": []})
        _dump(
            stage / "metrics.json",
            {"stage": stage.name, "iteration": pending, "done": False, "val_acc_pruned": 60.5},
        )
    if group_experiment:
        acc = [91.2 - 0.05 * g - (0.002 * g**2.6 if g > 30 else 0) for g in range(1, 51)]
        _dump(
            root / "group_experiment.json",
            {
                "G": 50,
                "split": "val",
                "images": 2000,
                "baseline_acc": 91.2,
                "accuracy": acc,
                "pruned_groups": LAYERS,
            },
        )
    if finished:
        _dump(root / "deploy" / "baseline" / "deploy.json", deploy_record(0.8, 0.5, 90.8))
        _dump(root / "deploy" / "iter_02" / "deploy.json", deploy_record(0.4, 0.2, 89.9))
        rows = []
        for k in range(1, iterations + 1):
            m = iteration_metrics(k)
            rows.append(
                {
                    "iteration": k,
                    **{key: m[key] for key in ("params", "flops", "val_acc", "test_acc")},
                    "params_reduction": 1 - m["params"] / BASE["params"],
                    "flops_reduction": 1 - m["flops"] / BASE["flops"],
                    "val_acc_pruned": m["val_acc_pruned"],
                    "within_tolerance": m["within_tolerance"],
                }
            )
        kept = 0
        for r in rows:
            if not r["within_tolerance"]:
                break
            kept = r["iteration"]
        channels = {name: [n] for name, n in _channels(1.0).items()}
        for k in range(1, iterations + 1):
            for name, n in _channels(ITERS[k - 1][0]).items():
                channels[name].append(n)
        _dump(
            root / "summary.json",
            {
                "baseline": BASE,
                "iterations": rows,
                "kept": kept,
                "stopped": "tolerance" if kept < iterations else "max_iterations",
                "tolerance": TOLERANCE,
                "distill": None,
                "channels": channels,
            },
        )
    return root


@pytest.fixture
def fake_run() -> Callable[..., Path]:
    """`fake_run(root, **options)` writes a run folder; see `write_run`."""
    return write_run
