"""Compare prunewise's pruning with Torch-Pruning 1.6.1 on Fashion-MNIST, over seeds.

For each architecture one baseline is trained (cached under --work). For each FLOPs target
(--targets, fraction of the baseline's FLOPs removed) every method of bench/peers_methods.py
prunes it to that target (within --tolerance) and spends the same training budget (--budget
epochs: sparse training, fine-tuning between iterative steps and after the last), once per
seed (--seeds: data order, augmentation draws and the analysis images). Each finished
(architecture, target, method, seed) is one line of --work/cells.jsonl, so an interrupted
run resumes where it stopped; the JSON (--out) is rebuilt from those lines after each one.

Reported per method: mean and std of validation and test accuracy over the seeds. Per
architecture and target: the best Torch-Pruning method and the best prunewise method (each
chosen by mean validation accuracy) and the paired difference of their test accuracies, seed
by seed, with a 95 % Student-t interval.

Run: `make bench-deps`, then `.venv/bin/python bench/compare_peers.py` (see bench/README.md
for the sizes measured); `--quick` is a smoke run on 300 training images.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from _record import header
from peers_methods import METHODS, fit, prune_to, schedule, slimming_regularizer, tp_regularizer
from scipy import stats
from torch import nn

from prunewise.analysis import count_flops, count_params
from prunewise.data import DataConfig, limit_data, load_data, make_loader, sample_images
from prunewise.models import build_model
from prunewise.prune import RefinedConfig
from prunewise.train import evaluate

DEFAULT_ARCHS = "vgg13_bn_small:0.5,resnet20:1"
SETTING_KEYS = (
    "train_images",
    "epochs",
    "budget",
    "steps",
    "sparse_epochs",
    "lr",
    "batch_size",
    "images",
    "alpha",
    "beta",
    "prune_tied",
    "slimming",
    "tp_slim_reg",
    "tp_group_reg",
    "tolerance",
)


@dataclass(frozen=True)
class Arch:
    """One architecture: registry name and width multiplier."""

    name: str
    width: float

    @property
    def label(self) -> str:
        """Name with its width, e.g. vgg13_bn_small@0.5."""
        return f"{self.name}@{self.width:g}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=DEFAULT_ARCHS, help="name:width,... (prunewise registry)")
    p.add_argument("--methods", default=",".join(METHODS), help="keys of peers_methods.METHODS")
    p.add_argument("--targets", default="0.75,0.5", help="FLOPs fractions to remove (0.75,0.5)")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma separated (0,1,2)")
    p.add_argument("--train-images", type=int, default=10000, help="training images (10000)")
    p.add_argument("--epochs", type=int, default=15, help="baseline training epochs (15)")
    p.add_argument("--budget", type=int, default=3, help="training epochs per method (3)")
    p.add_argument("--steps", type=int, default=3, help="steps of iterative methods (3)")
    p.add_argument("--sparse-epochs", type=int, default=1, help="sparse training epochs (1)")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate, every fit")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=100, help="images for sparsity analysis")
    p.add_argument("--alpha", type=float, default=0.5, help="eq. 4 alpha (scheme 1: 0.5)")
    p.add_argument("--beta", type=float, default=0.5, help="eq. 4 beta (scheme 1: 0.5)")
    p.add_argument("--prune-tied", action="store_true", help="prunewise prunes tied groups")
    p.add_argument("--slimming", type=float, default=1e-4, help="prunewise slimming lambda")
    p.add_argument("--tp-slim-reg", type=float, default=1e-5, help="BNScalePruner reg")
    p.add_argument("--tp-group-reg", type=float, default=5e-4, help="GroupNormPruner reg")
    p.add_argument("--tolerance", type=float, default=0.01, help="FLOPs match, relative")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--work", type=Path, default=Path("runs/compare_peers"))
    p.add_argument("--out", type=Path, default=Path("bench/results/compare_peers.json"))
    p.add_argument("--quick", action="store_true", help="smoke run: 300 images, 1 epoch")
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild --out from the finished cells"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.train_images, args.epochs, args.budget, args.steps = 300, 1, 2, 2
        args.work = args.work / "quick"
        args.out = args.work / "compare_peers_quick.json"
    args.arch_list = [
        Arch(n.strip(), float(w) if w else 1.0)
        for n, _, w in (a.partition(":") for a in args.archs.split(",") if a.strip())
    ]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    args.target_list = [float(t) for t in args.targets.split(",") if t.strip()]
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not all(0 < t < 1 for t in args.target_list):
        p.error("--targets must lie in (0, 1)")
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every cell's result depends on (cells of other settings are not mixed in)."""
    return {k: getattr(args, k) for k in SETTING_KEYS}


def digest(obj: Any) -> str:
    """Short hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def size(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters and FLOPs (MACs per image, prunewise's count for every model)."""
    return {"params": count_params(model), "flops": count_flops(model, shape)}


def baseline(
    arch: Arch, data: Any, args: argparse.Namespace, previous: dict
) -> tuple[nn.Module, dict]:
    """The trained baseline of `arch` (cached under --work); with --report-only and no cached
    file, the figures the `previous` report recorded for it."""
    c = data.input_shape[0]
    model = build_model(arch.name, num_classes=data.num_classes, in_channels=c, width=arch.width)
    key = digest([arch.label, args.epochs, args.lr, args.batch_size, args.train_images])
    path = args.work / f"baseline-{arch.name}-w{arch.width:g}-{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), {**json.loads(saved["info"]), "state_sha": state_sha(model)}
    if args.report_only:  # the baseline as the previous report recorded it (only its figures)
        for entry in previous.get("archs", []):
            if entry["arch"] == arch.label:
                return model.eval(), entry["baseline"]
        raise SystemExit(f"{arch.label}: no baseline under {args.work} or in {args.out}")
    print(f"{arch.label}: training the baseline, {args.epochs} epochs ...", flush=True)
    t0 = time.perf_counter()
    loss = fit(
        model, data.train, epochs=args.epochs, lr=args.lr, seed=0, batch_size=args.batch_size
    )
    info = {
        **size(model, tuple(data.input_shape)),
        "epochs": args.epochs,
        "final_loss": loss,
        "seconds": round(time.perf_counter() - t0, 1),
        "val_acc": evaluate(model, make_loader(data.val, 512, shuffle=False)),
        "test_acc": evaluate(model, make_loader(data.test, 512, shuffle=False)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "info": json.dumps(info)}, path)
    print(f"  baseline: val {info['val_acc']:.2f} %, test {info['test_acc']:.2f} %", flush=True)
    return model.eval(), {**info, "state_sha": state_sha(model)}


def previous_report(path: Path) -> dict:
    """The report --out holds (empty when there is none)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def known_baselines(previous: dict) -> dict[str, dict]:
    """Baseline figures by state hash: per target and per architecture in a report, so a
    target kept from an earlier baseline is shown with that baseline's accuracy."""
    out = {}
    for entry in previous.get("archs", []):
        for info in [entry["baseline"], *(t.get("baseline", {}) for t in entry["targets"])]:
            if info.get("state_sha"):
                out[info["state_sha"]] = info
    return out


def kept_baseline(done: dict, arch: str, target: float, args: argparse.Namespace) -> str | None:
    """The baseline hash of a finished target whose cells all come from one baseline (every
    method and seed present): kept as it is when the baseline is retrained on another machine,
    since the comparison is paired within a target. None when the target is not complete."""
    cells = [done.get((arch, target, m, s)) for m in args.method_list for s in args.seed_list]
    shas = {c.get("baseline_sha") for c in cells if c is not None}
    whole = None not in cells or args.report_only  # a report shows what there is
    return shas.pop() if whole and len(shas) == 1 else None


def state_sha(model: nn.Module) -> str:
    """Short hash of the weights: cells pruned from another baseline are not mixed in."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def run_cell(
    base: nn.Module, binfo: dict, key: str, target: float, seed: int, data: Any, args: Any
) -> dict[str, Any]:
    """One method, one target, one seed: prune on its schedule, train, measure."""
    method = METHODS[key]
    sched = schedule(method, target, args.budget, args.steps, args.sparse_epochs)
    shape = tuple(data.input_shape)
    images = sample_images(data.val, args.images, seed)
    refined = RefinedConfig(alpha=args.alpha, beta=args.beta, prune_tied=args.prune_tied)
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    train_kw = {"lr": args.lr, "batch_size": args.batch_size}
    if sched.sparse_epochs:
        reg = (
            slimming_regularizer(args.slimming)
            if method.family == "prunewise"
            else tp_regularizer(
                model,
                method,
                images[:1],
                args.tp_slim_reg if method.kind == "slim" else args.tp_group_reg,
            )
        )
        fit(model, data.train, epochs=sched.sparse_epochs, seed=seed, regularize=reg, **train_kw)
    steps = []
    for k, (left, epochs) in enumerate(zip(sched.flops_left, sched.epochs_after, strict=True)):
        found = prune_to(
            model,
            method,
            round(left * binfo["flops"]),
            images=images,
            refined=refined,
            tol=args.tolerance,
        )
        model = found.model
        acc = evaluate(model, make_loader(data.val, 512, shuffle=False))
        loss = fit(model, data.train, epochs=epochs, seed=1000 * seed + k, **train_kw)
        steps.append(
            {
                "knob": round(found.knob, 6),
                "flops": found.flops,
                "rel_error": found.rel_error,
                "tries": found.tries,
                "val_acc_after_prune": acc,
                "epochs": epochs,
                "loss": loss,
            }
        )
    sz = size(model, shape)
    return {
        "method": key,
        "target": target,
        "seed": seed,
        **sz,
        "params_reduction": 1 - sz["params"] / binfo["params"],
        "flops_reduction": 1 - sz["flops"] / binfo["flops"],
        "val_acc": evaluate(model, make_loader(data.val, 512, shuffle=False)),
        "test_acc": evaluate(model, make_loader(data.test, 512, shuffle=False)),
        "schedule": asdict(sched),
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def read_cells(path: Path, setting_key: str) -> dict[tuple, dict]:
    """Finished cells of these settings, keyed by (arch, target, method, seed)."""
    cells: dict[tuple, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else None
            if row and row["settings_key"] == setting_key:
                cells[(row["arch"], row["target"], row["method"], row["seed"])] = row
    return cells


def summarize(rows: list[dict], metric: str) -> dict[str, float | None]:
    """Mean and sample std of one metric over seeds."""
    vals = [r[metric] for r in rows]
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
    }


def paired(a: list[dict], b: list[dict]) -> dict[str, Any] | None:
    """Test accuracy of a minus b, seed by seed: mean and 95 % Student-t interval."""
    by_seed = {r["seed"]: r["test_acc"] for r in b}
    diffs = [r["test_acc"] - by_seed[r["seed"]] for r in a if r["seed"] in by_seed]
    if len(diffs) < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * sd / len(diffs) ** 0.5
    return {"n": len(diffs), "mean": mean, "ci95": [mean - half, mean + half], "diffs": diffs}


def compare(cells: list[dict], methods: list[str]) -> dict[str, Any]:
    """Per method means; best peer, best prunewise (by mean val) and their paired test gap."""
    per: dict[str, Any] = {}
    for key in methods:
        rows = [c for c in cells if c["method"] == key]
        if rows:
            per[key] = {
                "label": METHODS[key].label,
                "family": METHODS[key].family,
                "seeds": sorted(r["seed"] for r in rows),
                "val_acc": summarize(rows, "val_acc"),
                "test_acc": summarize(rows, "test_acc"),
                "params_reduction": statistics.fmean(r["params_reduction"] for r in rows),
                "flops_reduction": statistics.fmean(r["flops_reduction"] for r in rows),
            }

    def best(family: str) -> str | None:
        keys = [k for k in per if per[k]["family"] == family]
        return max(keys, key=lambda k: per[k]["val_acc"]["mean"]) if keys else None

    peer, ours = best("torch-pruning"), best("prunewise")
    gap = None
    if peer and ours:
        gap = paired(
            [c for c in cells if c["method"] == ours], [c for c in cells if c["method"] == peer]
        )
    return {"methods": per, "best_peer": peer, "best_prunewise": ours, "prunewise_minus_peer": gap}


def _std(stat: dict) -> str:
    return f" ± {stat['std']:.2f}" if stat["std"] is not None else ""


def print_table(arch: str, target: float, cmp: dict, base: dict) -> None:
    """One architecture and target."""
    print(
        f"\n{arch}, {100 * target:.0f} % of the FLOPs removed "
        f"(baseline val {base['val_acc']:.2f}, test {base['test_acc']:.2f})"
    )
    print(f"{'method':<38} {'params-%':>8} {'FLOPs-%':>7} {'val':>13} {'test':>13} seeds")
    for m in cmp["methods"].values():
        v, t = m["val_acc"], m["test_acc"]
        print(
            f"{m['label']:<38} {100 * m['params_reduction']:>8.1f} "
            f"{100 * m['flops_reduction']:>7.1f} {v['mean']:>6.2f}{_std(v):<7} "
            f"{t['mean']:>6.2f}{_std(t):<7} {len(m['seeds'])}"
        )
    gap = cmp["prunewise_minus_peer"]
    if gap:
        lo, hi = gap["ci95"]
        print(
            f"best prunewise ({cmp['best_prunewise']}) - best peer ({cmp['best_peer']}): "
            f"{gap['mean']:+.2f} test points, 95 % CI [{lo:+.2f}, {hi:+.2f}] over {gap['n']} seeds"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the missing cells, print the tables, write the JSON after each cell."""
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    data = load_data(DataConfig(name="fashion-mnist", data_dir=args.data_dir, seed=0))
    data = limit_data(data, args.train_images, 0)  # val (5,000) and test (10,000) whole
    cfg = settings(args)
    key = digest(cfg)
    log = args.work / "cells.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = read_cells(log, key)
    report = {
        "benchmark": "compare_peers",
        **header([]),
        "torch_pruning": importlib.metadata.version("torch-pruning"),
        "torch": torch.__version__,
        "settings": {
            **cfg,
            "targets": args.target_list,
            "seeds": args.seed_list,
            "split_sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "input_shape": list(data.input_shape),
            "settings_key": key,
        },
        "archs": [],
    }
    previous = previous_report(args.out)  # read before this run overwrites it
    seen = known_baselines(previous)
    for arch in args.arch_list:
        base, binfo = baseline(arch, data, args, previous)  # cached after the first run
        sha = binfo["state_sha"]
        entry = {"arch": arch.label, "baseline": binfo, "targets": []}
        report["archs"].append(entry)
        for target in args.target_list:
            kept = kept_baseline(done, arch.label, target, args)
            for method in args.method_list:
                for seed in args.seed_list:
                    cell = (arch.label, target, method, seed)
                    if cell in done and done[cell].get("baseline_sha") not in (None, sha, kept):
                        del done[cell]  # pruned from another baseline (retrained elsewhere)
                    if cell in done or args.report_only:
                        continue
                    row = run_cell(base, binfo, method, target, seed, data, args)
                    row.update(arch=arch.label, settings_key=key, baseline_sha=sha)
                    with log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    done[cell] = row
                    print(
                        f"{arch.label} {100 * target:.0f}% {method} seed {seed}: "
                        f"FLOPs -{100 * row['flops_reduction']:.1f} %, params "
                        f"-{100 * row['params_reduction']:.1f} %, val {row['val_acc']:.2f}, "
                        f"test {row['test_acc']:.2f} ({row['seconds']:.0f} s)",
                        flush=True,
                    )
            rows = [c for k, c in done.items() if k[0] == arch.label and k[1] == target]
            cmp = compare(rows, args.method_list)
            tinfo = seen.get(kept, binfo) if kept and kept != sha else binfo  # its own baseline
            entry["targets"].append({"target": target, "baseline": tinfo, **cmp, "cells": rows})
            print_table(arch.label, target, cmp, tinfo)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
