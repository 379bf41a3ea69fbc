"""Compare prunewise's layer-wise refined pruning with Torch-Pruning 1.6.1 on Fashion-MNIST.

For each architecture (default: vgg13_bn_small at width 0.25 and the CIFAR resnet20), one
baseline is trained once (cached under --work) and pruned by every method to the same FLOPs:

- prunewise: refined_plan (eq. 4 ratio per group from input sparsity, lowest |gamma| out) +
  apply_plan, repeated (analyse -> prune, no training in between) until at least --target of
  the baseline's FLOPs are gone. Whole steps only: the FLOPs reduction it reaches is the one
  the other methods are matched to.
- Torch-Pruning: MetaPruner (= BasePruner in 1.6.1) on a deep copy of the same baseline, with
  BNScaleImportance (per-layer "uniform" ratio, and global_pruning=True) and L1
  MagnitudeImportance(p=1) (uniform; global on request). The pruning ratio is found by
  bisection so that the pruned model's FLOPs lie within --tolerance of prunewise's.

FLOPs (MACs per image) and parameters of every model are counted the same way, by
prunewise.analysis.count_flops / count_params. Every pruned model is then fine-tuned with the
same budget (epochs, learning-rate schedule, seed, data order and augmentation draws) and its
validation and test accuracy measured. Results are printed and written as JSON.

Run: `make bench-deps` then `.venv/bin/python bench/compare_peers.py` (defaults sized for about
35 minutes on 2 CPU cores, an estimate); `--quick` is a smoke run on 500 images a split (about
4 minutes on 2 busy CPU cores). See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunewise.analysis import count_flops, count_params
from prunewise.data import DataConfig, limit_data, load_data, make_loader, sample_images
from prunewise.models import build_model
from prunewise.prune import RefinedConfig, apply_plan, refined_plan
from prunewise.train import TrainConfig, evaluate, pick_device, train

PW = "prunewise refined"
TP_METHODS: dict[str, tuple[str, str, bool]] = {
    # key: (label, importance, global_pruning)
    "tp-bn-uniform": ("TP BNScale uniform", "bn", False),
    "tp-bn-global": ("TP BNScale global", "bn", True),
    "tp-l1-uniform": ("TP L1 uniform", "l1", False),
    "tp-l1-global": ("TP L1 global", "l1", True),
}
DEFAULT_METHODS = "prunewise,tp-bn-uniform,tp-bn-global,tp-l1-uniform"
DEFAULT_ARCHS = "vgg13_bn_small:0.25,resnet20:1"

NOTES = [
    "FLOPs are multiply-accumulates per image at 1x32x32 (fvcore convention: conv and linear "
    "MACs, BatchNorm 2 per element, adaptive average pooling 1 per input element), counted by "
    "prunewise.analysis.count_flops on every model, baseline and pruned, whatever tool pruned it.",
    "prunewise: refined_plan + apply_plan repeated on the pruned model (sparsity re-measured on "
    "the same analysis images each step, no training in between) until the FLOPs reduction "
    "reaches --target; whole steps only, so the reduction reached can exceed the target. Tied "
    "(residual) groups stay whole unless --prune-tied, as in paper A.",
    "Torch-Pruning: tp.pruner.MetaPruner(model, example, importance, pruning_ratio=r, "
    "global_pruning=..., ignored_layers=[final classifier]) + step() on a deep copy of the same "
    "baseline. BNScaleImportance ranks channels by |gamma| of the group's BatchNorms; "
    "MagnitudeImportance(p=1) by the L1 norm of the group's weights. 'uniform' = the same ratio "
    "for every group (global_pruning=False). Torch-Pruning prunes residual-tied groups too.",
    "The Torch-Pruning ratio r is found by bisection on [0, --max-ratio] so that the pruned "
    "model's FLOPs are within --tolerance (relative) of prunewise's; if no ratio gets there "
    "(FLOPs move in steps), the closest one evaluated is used and flops_match_ok is false.",
    "Fine-tuning: the same TrainConfig for every pruned model (SGD, Nesterov momentum 0.9, wd "
    "1e-4, cosine from --ft-lr to 1e-5, --ft-epochs epochs) and, per fine-tune seed, a fresh "
    "loader and global RNG seeded alike, so data order and augmentation draws are identical.",
    "Accuracies are top-1 percent; val is the 5000-image split held out of the training set "
    "(seeded), test the 10000-image Fashion-MNIST test set. acc_before_ft is the pruned model's "
    "accuracy straight after pruning (BatchNorm running statistics as inherited).",
]


@dataclass(frozen=True)
class Arch:
    """One architecture to compare: registry name and width multiplier."""

    name: str
    width: float

    @property
    def label(self) -> str:
        """Name with its width, e.g. vgg13_bn_small@0.25."""
        return f"{self.name}@{self.width:g}"


def parse_archs(text: str) -> list[Arch]:
    """'name:width,name:width' (width defaults to 1)."""
    archs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, width = item.partition(":")
        archs.append(Arch(name.strip(), float(width) if width else 1.0))
    return archs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=DEFAULT_ARCHS, help="name:width,... (prunewise registry)")
    p.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"from prunewise,{','.join(TP_METHODS)}"
    )
    p.add_argument("--target", type=float, default=0.5, help="FLOPs fraction to remove (0.5)")
    p.add_argument("--epochs", type=int, default=3, help="baseline training epochs (3)")
    p.add_argument("--ft-epochs", type=int, default=1, help="fine-tuning epochs per model (1)")
    p.add_argument("--lr", type=float, default=0.01, help="baseline initial learning rate")
    p.add_argument("--ft-lr", type=float, default=0.01, help="fine-tuning initial learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="baseline, data split, analysis images")
    p.add_argument("--ft-seeds", default="0", help="fine-tuning seeds, comma separated (0)")
    p.add_argument("--images", type=int, default=100, help="images for sparsity analysis (100)")
    p.add_argument("--alpha", type=float, default=0.5, help="eq. 4 alpha (scheme 1: 0.5)")
    p.add_argument("--beta", type=float, default=0.5, help="eq. 4 beta (scheme 1: 0.5)")
    p.add_argument("--policy", default="eq4", choices=("eq4", "continuous"))
    p.add_argument("--prune-tied", action="store_true", help="prunewise prunes tied groups too")
    p.add_argument("--max-steps", type=int, default=10, help="prunewise analyse->prune steps")
    p.add_argument("--tolerance", type=float, default=0.01, help="FLOPs match, relative (0.01)")
    p.add_argument("--max-ratio", type=float, default=0.95, help="TP ratio search upper bound")
    p.add_argument("--limit", type=int, default=None, help="at most N images per split")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 500 images a split")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (training only)")
    p.add_argument("--work", type=Path, default=Path("runs/compare_peers"), help="cache folder")
    p.add_argument("--retrain", action="store_true", help="ignore cached baselines")
    p.add_argument("--out", type=Path, default=Path("bench/results/compare_peers.json"))
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="only merge these result files (runs of other --archs, same settings) into --out",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.ft_epochs = 1, 1
        args.limit = args.limit or 500
        if args.out == Path("bench/results/compare_peers.json"):
            args.out = args.work / "compare_peers_quick.json"
    args.arch_list = parse_archs(args.archs)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m != "prunewise" and m not in TP_METHODS]
    if unknown or "prunewise" not in args.method_list:
        p.error(f"--methods must include prunewise and take from {', '.join(TP_METHODS)}")
    args.seed_list = [int(s) for s in args.ft_seeds.split(",") if s.strip()]
    if not 0 < args.target < 1:
        p.error("--target must be in (0, 1)")
    return args


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform's answer)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(package: str) -> str | None:
    """Installed distribution version, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU, cores, GPU, library versions."""
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "training_device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pruning": version_of("torch-pruning") or getattr(tp, "__version__", None),
        "torch_pruning_module_version": getattr(tp, "__version__", None),
        "prunewise": version_of("prunewise"),
        "prunewise_git": git_revision(),
    }


def git_revision() -> str | None:
    """Commit of the checkout (plus '+dirty' when it has changes), if git is there."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


# ---------------------------------------------------------------- models


def conv_widths(model: nn.Module) -> list[int]:
    """Output channels of every convolution, in module order."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def classifier(model: nn.Module) -> nn.Module:
    """The last Conv2d/Linear of the model (its classifier: never pruned)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]


def size_of(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters and FLOPs (MACs per image), counted by prunewise."""
    return {"params": count_params(model), "flops": count_flops(model, input_shape)}


def seconds_since(t0: float) -> float:
    """Wall seconds since t0, rounded."""
    return round(time.perf_counter() - t0, 2)


# ---------------------------------------------------------------- baseline


def baseline_key(arch: Arch, args: argparse.Namespace) -> str:
    """Cache key: everything the baseline depends on."""
    desc = json.dumps(
        [arch.name, arch.width, args.epochs, args.lr, args.batch_size, args.seed, args.limit],
        sort_keys=True,
    )
    digest = hashlib.sha256(desc.encode()).hexdigest()[:10]
    return f"baseline-{arch.name}-w{arch.width:g}-e{args.epochs}-s{args.seed}-{digest}"


def get_baseline(
    arch: Arch, data: Any, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained baseline (from the cache under --work, or trained now and cached)."""
    c, _, _ = data.input_shape
    model = build_model(arch.name, num_classes=data.num_classes, in_channels=c, width=arch.width)
    path = args.work / f"{baseline_key(arch, args)}.pt"
    if path.is_file() and not args.retrain:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        info = json.loads(saved["info"])
        info["cached"] = str(path)
        print(f"  baseline from cache {path}", flush=True)
        return model.eval(), info
    print(f"  training baseline ({args.epochs} epochs) ...", flush=True)
    t0 = time.perf_counter()
    history = train(
        model,
        make_loader(data.train, args.batch_size, shuffle=True, seed=args.seed),
        TrainConfig(
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            device=str(device),
            progress=sys.stderr.isatty(),
        ),
        val_loader=make_loader(data.val, 512, shuffle=False),
        desc=f"baseline {arch.label}",
    )
    info = {
        "train_seconds": seconds_since(t0),
        "history": history,
        "val_acc": evaluate(model, make_loader(data.val, 512, shuffle=False)),
        "test_acc": evaluate(model, make_loader(data.test, 512, shuffle=False)),
    }
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "info": json.dumps(info)}, tmp)
    os.replace(tmp, path)
    info["cached"] = None
    print(
        f"  baseline trained in {info['train_seconds']:.0f} s: val {info['val_acc']:.2f} %, "
        f"test {info['test_acc']:.2f} %",
        flush=True,
    )
    return model, info


# ---------------------------------------------------------------- pruning


@dataclass
class Pruned:
    """A pruned model and how it was obtained."""

    model: nn.Module
    info: dict[str, Any]


def prune_prunewise(
    baseline: nn.Module, images: torch.Tensor, args: argparse.Namespace, base_flops: int
) -> Pruned:
    """Refined plan + surgery, repeated until the FLOPs reduction reaches the target."""
    shape = tuple(images.shape[1:])
    cfg = RefinedConfig(
        alpha=args.alpha, beta=args.beta, policy=args.policy, prune_tied=args.prune_tied
    )
    model: nn.Module = copy.deepcopy(baseline).eval()
    steps = []
    t0 = time.perf_counter()
    for step in range(1, args.max_steps + 1):
        plan = refined_plan(model, images, cfg)
        removed = sum(d.removed for d in plan.decisions)
        if not removed:
            print(f"    step {step}: the plan removes nothing; stopping", flush=True)
            break
        model = apply_plan(model, plan)
        flops = count_flops(model, shape)
        reduction = 1 - flops / base_flops
        steps.append(
            {
                "step": step,
                "channels_removed": removed,
                "groups_pruned": sum(1 for d in plan.decisions if d.removed),
                "flops": flops,
                "flops_reduction": reduction,
                "group_ratios": {d.group: round(d.ratio, 4) for d in plan.decisions if d.removed},
            }
        )
        print(
            f"    step {step}: {removed} channels out, FLOPs reduction {100 * reduction:.1f} %",
            flush=True,
        )
        if reduction >= args.target:
            break
    info = {
        "seconds": seconds_since(t0),
        "steps": steps,
        "config": {
            "alpha": cfg.alpha,
            "beta": cfg.beta,
            "policy": cfg.policy,
            "prune_tied": cfg.prune_tied,
            "min_channels": cfg.min_channels,
            "images": int(images.shape[0]),
        },
        "reached_target": bool(steps) and steps[-1]["flops_reduction"] >= args.target,
    }
    return Pruned(model, info)


def make_importance(kind: str) -> tp.importance.Importance:
    """Torch-Pruning importance criterion."""
    if kind == "bn":
        return tp.importance.BNScaleImportance()
    return tp.importance.MagnitudeImportance(p=1)


def tp_prune(
    baseline: nn.Module, ratio: float, kind: str, global_pruning: bool, shape: tuple[int, ...]
) -> nn.Module:
    """A deep copy of the baseline pruned by Torch-Pruning at `ratio`."""
    model = copy.deepcopy(baseline).eval()
    if ratio <= 0:
        return model
    example = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=make_importance(kind),
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=[classifier(model)],
    )
    pruner.step()
    with torch.no_grad():
        model(example)  # the pruned model must still run
    return model


def prune_torch_pruning(
    baseline: nn.Module,
    kind: str,
    global_pruning: bool,
    target_flops: int,
    args: argparse.Namespace,
    shape: tuple[int, ...],
) -> Pruned:
    """Bisection on Torch-Pruning's ratio until its FLOPs are within tolerance of the target."""
    t0 = time.perf_counter()
    tried: list[dict[str, float]] = []
    best: tuple[float, float, nn.Module] | None = None  # (relative error, ratio, model)

    def attempt(r: float) -> int:
        nonlocal best
        model = tp_prune(baseline, r, kind, global_pruning, shape)
        flops = count_flops(model, shape)
        err = abs(flops / target_flops - 1)
        tried.append({"ratio": round(r, 6), "flops": flops, "rel_error": round(err, 5)})
        if best is None or err < best[0]:
            best = (err, r, model)
        return flops

    lo, hi = 0.0, args.max_ratio
    if attempt(hi) > target_flops:
        print(f"    ratio {hi} does not reach the FLOPs of prunewise", flush=True)
    else:
        for _ in range(40):
            if best is not None and best[0] <= args.tolerance:
                break
            mid = (lo + hi) / 2
            if attempt(mid) > target_flops:
                lo = mid  # too many FLOPs left: prune more
            else:
                hi = mid
            if hi - lo < 1e-5:
                break
    assert best is not None
    err, ratio, model = best
    info = {
        "seconds": seconds_since(t0),
        "pruning_ratio": ratio,
        "flops_rel_error_vs_prunewise": err,
        "flops_match_ok": err <= args.tolerance,
        "search": tried,
        "importance": "BNScaleImportance()" if kind == "bn" else "MagnitudeImportance(p=1)",
        "global_pruning": global_pruning,
    }
    return Pruned(model, info)


# ---------------------------------------------------------------- fine-tuning


def fine_tune(
    pruned: nn.Module, data: Any, args: argparse.Namespace, device: torch.device, label: str
) -> dict[str, Any]:
    """Fine-tune a copy per seed with the common budget; accuracies per seed and their mean."""
    val_loader = make_loader(data.val, 512, shuffle=False)
    test_loader = make_loader(data.test, 512, shuffle=False)
    runs = []
    for seed in args.seed_list:
        model = copy.deepcopy(pruned)
        t0 = time.perf_counter()
        history = train(
            model,
            make_loader(data.train, args.batch_size, shuffle=True, seed=seed),
            TrainConfig(
                epochs=args.ft_epochs,
                lr=args.ft_lr,
                seed=seed,
                device=str(device),
                progress=sys.stderr.isatty(),
            ),
            desc=f"fine-tune {label}",
        )
        seconds = seconds_since(t0)
        runs.append(
            {
                "seed": seed,
                "seconds": seconds,
                "final_loss": history[-1]["loss"] if history else None,
                "val_acc": evaluate(model, val_loader),
                "test_acc": evaluate(model, test_loader),
            }
        )
        print(
            f"    fine-tuned (seed {seed}) in {seconds:.0f} s: val {runs[-1]['val_acc']:.2f} %, "
            f"test {runs[-1]['test_acc']:.2f} %",
            flush=True,
        )
        del model

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in runs)

    def std(key: str) -> float | None:
        return statistics.stdev(r[key] for r in runs) if len(runs) > 1 else None

    return {
        "runs": runs,
        "val_acc": mean("val_acc"),
        "test_acc": mean("test_acc"),
        "val_acc_std": std("val_acc"),
        "test_acc_std": std("test_acc"),
    }


# ---------------------------------------------------------------- one architecture


def method_entry(
    name: str,
    pruned: Pruned,
    base: dict[str, Any],
    data: Any,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Size, accuracy before and after fine-tuning of one pruned model."""
    shape = tuple(data.input_shape)
    size = size_of(pruned.model, shape)
    cpu = torch.device("cpu")
    entry: dict[str, Any] = {
        "method": name,
        **size,
        "params_reduction": 1 - size["params"] / base["params"],
        "flops_reduction": 1 - size["flops"] / base["flops"],
        "conv_widths": conv_widths(pruned.model),
        "prune": pruned.info,
        "val_acc_before_ft": evaluate(pruned.model, make_loader(data.val, 512, shuffle=False), cpu),
        "test_acc_before_ft": evaluate(
            pruned.model, make_loader(data.test, 512, shuffle=False), cpu
        ),
    }
    print(
        f"    {name}: params {size['params']:,}, FLOPs {size['flops']:,} "
        f"({100 * entry['flops_reduction']:.1f} % removed), test before fine-tune "
        f"{entry['test_acc_before_ft']:.2f} %",
        flush=True,
    )
    entry.update(fine_tune(pruned.model, data, args, device, name))
    entry["delta_test_vs_baseline"] = entry["test_acc"] - base["test_acc"]
    entry["delta_val_vs_baseline"] = entry["val_acc"] - base["val_acc"]
    return entry


def run_arch(
    arch: Arch, data: Any, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Baseline, every pruning method, fine-tuning, and the comparison for one architecture."""
    print(f"\n{arch.label}:", flush=True)
    t0 = time.perf_counter()
    shape = tuple(data.input_shape)
    baseline, binfo = get_baseline(arch, data, args, device)
    base = {
        **size_of(baseline, shape),
        "conv_widths": conv_widths(baseline),
        "val_acc": binfo["val_acc"],
        "test_acc": binfo["test_acc"],
        "train": binfo,
    }
    out: dict[str, Any] = {"arch": arch.name, "width": arch.width, "baseline": base}
    images = sample_images(data.val, args.images, args.seed)

    print("  prunewise refined:", flush=True)
    pw = prune_prunewise(baseline, images, args, base["flops"])
    pw_flops = count_flops(pw.model, shape)
    methods = [method_entry(PW, pw, base, data, args, device)]
    del pw
    for key in args.method_list:
        if key == "prunewise":
            continue
        label, kind, global_pruning = TP_METHODS[key]
        print(f"  {label}:", flush=True)
        try:
            pruned = prune_torch_pruning(baseline, kind, global_pruning, pw_flops, args, shape)
        except Exception as exc:  # Torch-Pruning may not handle a structure: report, go on
            print(f"    FAILED: {exc!r}", flush=True)
            methods.append(
                {
                    "method": label,
                    "error": repr(exc),
                    "traceback": traceback.format_exc(limit=6),
                }
            )
            continue
        print(
            f"    ratio {pruned.info['pruning_ratio']:.4f} after {len(pruned.info['search'])} "
            f"tries in {pruned.info['seconds']:.1f} s "
            f"(FLOPs {100 * pruned.info['flops_rel_error_vs_prunewise']:.2f} % off prunewise's)",
            flush=True,
        )
        methods.append(method_entry(label, pruned, base, data, args, device))
    ref = methods[0]
    for m in methods:
        if "error" in m:
            continue
        m["vs_prunewise"] = {
            "params_ratio": m["params"] / ref["params"],
            "flops_ratio": m["flops"] / ref["flops"],
            "val_acc_diff": m["val_acc"] - ref["val_acc"],
            "test_acc_diff": m["test_acc"] - ref["test_acc"],
        }
    out["methods"] = methods
    out["seconds"] = seconds_since(t0)
    return out


# ---------------------------------------------------------------- output


def print_table(entry: dict[str, Any], seeds: int) -> None:
    """One architecture's results."""
    b = entry["baseline"]
    print(f"\n{entry['arch']} (width {entry['width']:g})")
    head = (
        f"{'method':<20} {'params':>9} {'MFLOPs':>8} {'params-%':>8} {'FLOPs-%':>7} "
        f"{'FLOPs/pw':>8} {'test pre-FT':>11} {'val acc':>8} {'test acc':>13} {'Δtest':>6}"
    )
    print(head + "\n" + "-" * len(head))
    print(
        f"{'baseline':<20} {b['params']:>9,} {b['flops'] / 1e6:>8.2f} {'':>8} {'':>7} {'':>8} "
        f"{'':>11} {b['val_acc']:>8.2f} {b['test_acc']:>13.2f} {'':>6}"
    )
    for m in entry["methods"]:
        if "error" in m:
            print(f"{m['method']:<20} FAILED: {m['error'][:90]}")
            continue
        test = f"{m['test_acc']:.2f}"
        if m.get("test_acc_std") is not None:
            test += f" ± {m['test_acc_std']:.2f}"
        print(
            f"{m['method']:<20} {m['params']:>9,} {m['flops'] / 1e6:>8.2f} "
            f"{100 * m['params_reduction']:>8.1f} {100 * m['flops_reduction']:>7.1f} "
            f"{m['vs_prunewise']['flops_ratio']:>8.3f} "
            f"{m['test_acc_before_ft']:>11.2f} {m['val_acc']:>8.2f} {test:>13} "
            f"{m['delta_test_vs_baseline']:>+6.2f}"
        )
    if seeds > 1:
        print(f"(val/test accuracies: mean over {seeds} fine-tuning seeds, ± their std)")


def merge(paths: list[Path], out: Path) -> int:
    """Merge result files of runs over different architectures (same settings) into `out`."""
    reports = [json.loads(p.read_text()) for p in paths]
    first = reports[0]

    def comparable(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r["settings"].items() if k != "archs"}

    for p, r in zip(paths, reports, strict=True):
        if comparable(r) != comparable(first):
            raise SystemExit(f"{p}: settings differ from {paths[0]}; not merging")
    merged = {
        **first,
        "date_utc": max(r["date_utc"] for r in reports),
        "command": [r["command"] for r in reports],
        "merge_command": shlex.join(sys.orig_argv),
        "merged_at_git": git_revision(),
        "machine": first["machine"],
        "archs": [a for r in reports for a in r["archs"]],
        "total_wall_seconds": sum(r["total_wall_seconds"] for r in reports),
        "merged_from": [
            {"file": p.name, "date_utc": r["date_utc"], "archs": r["settings"]["archs"]}
            for p, r in zip(paths, reports, strict=True)
        ],
    }
    merged["settings"] = {
        **first["settings"],
        "archs": [a for r in reports for a in r["settings"]["archs"]],
    }
    machines = [r["machine"] for r in reports]
    if any(m != machines[0] for m in machines):
        merged["machine"] = machines
    for entry in merged["archs"]:
        print_table(entry, len(first["settings"]["fine_tune"]["seeds"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print tables, write the JSON (after each architecture)."""
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    device = pick_device(args.device)
    machine = machine_info(device)
    print(f"machine: {machine}", flush=True)
    started = time.perf_counter()
    data = load_data(DataConfig(name="fashion-mnist", data_dir=args.data_dir, seed=args.seed))
    if args.limit:
        data = limit_data(data, args.limit, args.seed)
    print(
        f"data: fashion-mnist, train {len(data.train)}, val {len(data.val)}, "
        f"test {len(data.test)}, input {data.input_shape}",
        flush=True,
    )
    report: dict[str, Any] = {
        "benchmark": "compare_peers",
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
        "machine": machine,
        "settings": {
            "dataset": "fashion-mnist",
            "split_sizes": {
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test),
            },
            "input_shape": list(data.input_shape),
            "archs": [a.label for a in args.arch_list],
            "methods": args.method_list,
            "target_flops_reduction": args.target,
            "baseline": {"epochs": args.epochs, "lr": args.lr, "seed": args.seed},
            "fine_tune": {"epochs": args.ft_epochs, "lr": args.ft_lr, "seeds": args.seed_list},
            "lr_min": TrainConfig().lr_min,
            "batch_size": args.batch_size,
            "analysis_images": args.images,
            "refined": {
                "alpha": args.alpha,
                "beta": args.beta,
                "policy": args.policy,
                "prune_tied": args.prune_tied,
                "max_steps": args.max_steps,
            },
            "flops_tolerance": args.tolerance,
            "tp_max_ratio": args.max_ratio,
            "limit": args.limit,
            "quick": args.quick,
        },
        "notes": NOTES,
        "archs": [],
    }
    for arch in args.arch_list:
        report["archs"].append(run_arch(arch, data, args, device))
        report["total_wall_seconds"] = seconds_since(started)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    for entry in report["archs"]:
        print_table(entry, len(args.seed_list))
    print(f"\ntotal {report['total_wall_seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
