"""Compensation of removed channels on Fashion-MNIST (issue 17): accuracy right after pruning
and after fine-tuning, the same plan with and without `apply_plan(..., compensate=images)`.

    .venv/bin/python bench/compensation.py --checkpoint runs/default/baseline/model.pt

For each policy (paper A's refined policy, scheme 1; and a harsher uniform 50 % by |gamma|),
one plan is decided on the baseline and applied twice; both models are scored on the whole
validation and test splits, then fine-tuned for `--epochs` with the same seed and settings and
scored again. Writes bench/results/compensation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import header

from prunewise.analysis import analyze, count_flops, count_params
from prunewise.data import DataConfig, load_data, make_loader, sample_images
from prunewise.graph import build_channel_graph
from prunewise.io import load_checkpoint
from prunewise.prune import RefinedConfig, apply_plan, decide
from prunewise.prune.policy import uniform_plan
from prunewise.train import TrainConfig, evaluate, make_train_loader, train


def _score(model: torch.nn.Module, data: Any) -> dict[str, float]:
    return {
        split: evaluate(model, make_loader(getattr(data, split), 512, shuffle=False))
        for split in ("val", "test")
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/default/baseline/model.pt")
    p.add_argument("--images", type=int, default=100, help="sparsity / compensation images")
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs after pruning")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/compensation.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    ck = load_checkpoint(args.checkpoint)
    data = load_data(DataConfig(seed=args.seed, image_size=ck.input_shape[-1]))
    shape = tuple(ck.input_shape)
    images = sample_images(data.val, args.images, args.seed)
    graph = build_channel_graph(ck.model, shape)
    plans = {
        "refined scheme 1 (paper A)": decide(analyze(graph, images), RefinedConfig()),
        "uniform 50 % by |gamma|": uniform_plan(graph, 0.5, importance="bn-gamma"),
    }
    baseline = _score(ck.model.eval(), data)
    results = []
    for name, plan in plans.items():
        for compensate in (False, True):
            start = time.perf_counter()
            model = apply_plan(graph, plan, compensate=images if compensate else None).eval()
            row: dict[str, Any] = {
                "policy": name,
                "compensate": compensate,
                "params": count_params(model),
                "flops": count_flops(model, shape),
                "after_pruning": _score(model, data),
            }
            if args.epochs:
                cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, progress=False)
                loader = make_train_loader(data.train, 128, seed=args.seed + 1000)
                train(model, loader, cfg)
                row["after_finetune"] = _score(model.eval(), data)
            row["seconds"] = round(time.perf_counter() - start, 1)
            results.append(row)
            print(json.dumps(row), flush=True)
    record = {
        **header([]),
        "checkpoint": args.checkpoint,
        "baseline": {
            "params": count_params(ck.model),
            "flops": count_flops(ck.model, shape),
            **baseline,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
