"""ONNX Runtime CPU latency of float vs INT8 and unpruned vs pruned models, against FLOPs.

For each model (torchvision resnet50 and vgg13_bn at 224x224 with random weights, and the
default Fashion-MNIST model: a prunewise checkpoint, or vgg13_bn_small at width 0.25 with random
weights), four ONNX files are timed on the CPU with prunewise's ONNX Runtime session settings:

- unpruned float and pruned float: prunewise.export.export_float;
- unpruned INT8 and pruned INT8: prunewise.quant.quantize (min/max calibration on seeded
  random-normal images) + prunewise.export.export_int8 (QDQ, fused to QLinearConv / QGemm).

The pruned torchvision models come from a uniform prunewise plan: in every prunable channel
group (residual-tied ones included), the `--keep` fraction of channels with the largest
BatchNorm |gamma| stays, rounded up to a multiple of `--multiple`. The pruned default model is
the run's kept iteration when a pruned checkpoint is found, else the same uniform plan.

Per (threads, batch) the four variants are timed interleaved: after the warm-up, every round
runs each variant once, in an order rotated from round to round. Derived per setting: FLOPs
ratio, speed-up from pruning (float and INT8) and its ratio to the FLOPs ratio, INT8 speed-up
over float, and pruned INT8 over unpruned float. Results are printed and written as JSON.

Run: `.venv/bin/python bench/deploy_speed.py` (about 8 minutes on 2 idle AVX2 CPU cores, an
estimate from smoke runs); `--quick` is a smoke run (default model, batch 1, 3 repeats). See
bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from prunewise.analysis import count_flops, count_params, group_gamma
from prunewise.export import (
    Latency,
    export_float,
    export_int8,
    int8_weight_layers,
    ort_logits,
    ort_session,
)
from prunewise.graph import ChannelGraph, build_channel_graph
from prunewise.io import load_checkpoint, read_json
from prunewise.models import build_model
from prunewise.pipeline import RunFolder
from prunewise.prune import PruningPlan, apply_plan, channels_to_keep, uniform_plan
from prunewise.prune.policy import gamma_order
from prunewise.quant import Int8Config, quantize

SEED = 0
DEFAULT_MODEL = "default"
TORCHVISION = ("resnet50", "vgg13_bn")
ALL_MODELS = (*TORCHVISION, DEFAULT_MODEL)
IMAGENET_SHAPE = (3, 224, 224)
FMNIST_SHAPE = (1, 32, 32)
DEFAULT_RUN = Path("runs/default")
DEFAULT_OUT = Path("bench/results/deploy_speed.json")
QUICK_OUT = Path("runs/deploy_speed/deploy_speed_quick.json")
VARIANTS = ("unpruned_float", "pruned_float", "unpruned_int8", "pruned_int8")
REWARM_BELOW_S = 0.25
BLOCK = 10  # consecutive timed runs of one variant, for variants faster than REWARM_BELOW_S
REPEATS = (30, 10)  # timed rounds at batch 1, at larger batches
WARMUP = (3, 1)  # untimed runs per variant at batch 1, at larger batches

NOTES = [
    "Latency: ONNX Runtime CPUExecutionProvider through prunewise.export.ort_session (all graph "
    "optimisations, sequential execution, one inter-op thread, `threads` intra-op threads); "
    "milliseconds per session.run on a seeded random-normal (batch, C, H, W) float32 input, the "
    "same input for all four variants. Sessions are opened once per thread count.",
    "Interleaving: per (threads, batch), each variant first runs `warmup` untimed times; then "
    "every round runs each variant in turn (order rotated by one each round), so drift in "
    "machine load hits all variants alike. A variant whose warm-up run took under "
    f"{REWARM_BELOW_S} s runs in blocks: one untimed run, then {BLOCK} timed runs in a row, so "
    "that it is timed as it runs in deployment (its own weights in cache, its own thread pool "
    "spinning, no other session's threads still spinning: timing such variants one run at a "
    "time made 2-thread runs of the pruned resnet50 look no faster than 1-thread ones). Rounds "
    "stop at `repeats` timed runs per variant, or after at least 3 once the slowest variant's "
    "timed runs add up to more than max_seconds. Median, 10th and 90th percentiles.",
    "FLOPs are multiply-accumulates per image counted by prunewise.analysis.count_flops on the "
    "torch models (fvcore convention, BatchNorm counted); ONNX Runtime folds BatchNorm into the "
    "convolutions, so the FLOPs it executes are slightly fewer for both variants alike.",
    "flops_ratio = unpruned MACs / pruned MACs. speedup_* are ratios of median latencies (slower "
    "/ faster). speedup_over_flops_ratio = pruning speed-up / flops_ratio (1.0: latency falls as "
    "much as FLOPs). total_speedup = unpruned float / pruned INT8.",
    "Weights of the torchvision models are random (speed only; accuracy is not measured). Their "
    "BatchNorm gammas are all 1, so which channels the |gamma| ranking keeps is arbitrary; the "
    "shapes, and so the latency, do not depend on it.",
    "INT8: prunewise.quant.quantize with Int8Config(calibration='minmax', calibration_images=N) "
    "on N seeded random-normal images (ranges are meaningless for accuracy, irrelevant for "
    "speed), per-channel symmetric int8 weights, per-tensor uint8 activations, exported as QDQ "
    "ONNX that ONNX Runtime fuses into integer kernels.",
]


@dataclass
class Variant:
    """One torch model to export: unpruned or pruned."""

    model: nn.Module
    source: str
    plan: dict[str, Any] | None = None


@dataclass
class Subject:
    """A model to benchmark: input shape and its unpruned and pruned variants."""

    name: str
    input_shape: tuple[int, ...]
    unpruned: Variant
    pruned: Variant
    notes: list[str]


# ---------------------------------------------------------------- options


def int_list(text: str) -> list[int]:
    """'1,32' -> [1, 32]."""
    return [int(v) for v in text.split(",") if v.strip()]


def per_batch(
    text: str | None,
    default: tuple[int, int],
    batches: list[int],
    name: str,
    p: argparse.ArgumentParser,
) -> dict[int, int]:
    """Batch size -> value: one for all, one per batch size, or the (batch 1, larger) default."""
    if text is None:
        return {b: default[0] if b == 1 else default[1] for b in batches}
    values = int_list(text)
    if len(values) == 1:
        values = values * len(batches)
    if len(values) != len(batches):
        p.error(f"{name}: give one value or one per batch size ({len(batches)})")
    return dict(zip(batches, values, strict=True))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ALL_MODELS), help=f"from {','.join(ALL_MODELS)}")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help=f"default model checkpoint ({DEFAULT_RUN}/baseline/model.pt if it exists)",
    )
    p.add_argument(
        "--pruned-checkpoint",
        type=Path,
        default=None,
        help="pruned default model (the kept iteration of the checkpoint's run folder)",
    )
    p.add_argument("--keep", type=float, default=0.5, help="uniform plan: channels kept (0.5)")
    p.add_argument("--multiple", type=int, default=8, help="round kept channels up to this (8)")
    p.add_argument("--batch-sizes", default="1,32", help="batch sizes (1,32)")
    p.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op threads (1,2)")
    p.add_argument(
        "--repeats",
        default=None,
        help=f"timed rounds: one value, or one per batch size (default {REPEATS[0]} at batch 1, "
        f"{REPEATS[1]} at larger batches)",
    )
    p.add_argument(
        "--warmup",
        default=None,
        help=f"untimed runs per variant: one value, or one per batch size (default {WARMUP[0]} "
        f"at batch 1, {WARMUP[1]} at larger batches)",
    )
    p.add_argument("--max-seconds", type=float, default=45.0, help="timed seconds cap (45)")
    p.add_argument("--calibration-images", type=int, default=32, help="INT8 calibration (32)")
    p.add_argument("--work", type=Path, default=None, help="keep the ONNX files here")
    p.add_argument("--quick", action="store_true", help="smoke run: default model, batch 1")
    p.add_argument("--out", type=Path, default=None, help=f"JSON ({DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes, args.repeats, args.warmup = DEFAULT_MODEL, "1", "3", "1"
        args.out = args.out or QUICK_OUT
    args.out = args.out or DEFAULT_OUT
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_list if m not in ALL_MODELS]
    if unknown or not args.model_list:
        p.error(f"--models takes from {', '.join(ALL_MODELS)}, got {args.models!r}")
    args.batch_list = int_list(args.batch_sizes)
    args.thread_list = int_list(args.threads)
    if not args.batch_list or not args.thread_list or min(args.batch_list + args.thread_list) < 1:
        p.error("--batch-sizes and --threads need positive integers")
    args.repeats_for = per_batch(args.repeats, REPEATS, args.batch_list, "--repeats", p)
    args.warmup_for = per_batch(args.warmup, WARMUP, args.batch_list, "--warmup", p)
    if min(args.repeats_for.values()) < 3 or min(args.warmup_for.values()) < 1:
        p.error("--repeats must be >= 3 (percentiles) and --warmup >= 1")
    if not 0 < args.keep < 1:
        p.error("--keep must be in (0, 1)")
    if args.multiple < 1 or args.max_seconds <= 0:
        p.error("--multiple must be >= 1 and --max-seconds > 0")
    if args.checkpoint is None and (DEFAULT_RUN / "baseline" / "model.pt").is_file():
        args.checkpoint = DEFAULT_RUN / "baseline" / "model.pt"
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


def cpu_flags() -> list[str]:
    """The SIMD flags that decide which float and INT8 kernels ONNX Runtime can use."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def version_of(package: str) -> str | None:
    """Installed distribution version, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """Commit of the checkout (plus '+dirty' when it has changes), if git is there."""
    root = str(Path(__file__).resolve().parent.parent)
    try:
        rev = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    """CPU, cores, library versions."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnx": version_of("onnx"),
        "torch": torch.__version__,
        "torchvision": version_of("torchvision"),
        "numpy": np.__version__,
        "prunewise": version_of("prunewise"),
        "prunewise_git": git_revision(),
    }


# ---------------------------------------------------------------- models


def round_plan(graph: ChannelGraph, plan: PruningPlan, multiple: int) -> PruningPlan:
    """Round every pruned group's kept count up to a multiple, keeping the largest |gamma|."""
    if multiple <= 1:
        return plan
    decisions = []
    for d in plan.decisions:
        if not d.removed or len(d.kept) % multiple == 0:
            decisions.append(d)
            continue
        gamma = group_gamma(graph, d.group)
        keep = channels_to_keep(d.channels, 1 - len(d.kept) / d.channels, round_to=multiple)
        kept = tuple(sorted(int(i) for i in gamma_order(gamma)[len(gamma) - keep :]))
        decisions.append(replace(d, kept=kept))
    return PruningPlan(tuple(decisions), plan.input_shape, {**plan.policy, "round_to": multiple})


def uniform_pruned(
    model: nn.Module, input_shape: tuple[int, ...], args: argparse.Namespace
) -> Variant:
    """The model pruned by prunewise's uniform |gamma| plan at --keep, rounded to --multiple."""
    graph = build_channel_graph(model, input_shape)
    plan = uniform_plan(graph, 1 - args.keep, prune_tied=True)
    plan = round_plan(graph, plan, args.multiple)
    pruned = apply_plan(graph, plan).eval()
    kept = [len(d.kept) for d in plan.decisions if d.removed]
    info = {
        "policy": dict(plan.policy),
        "groups": len(plan.decisions),
        "groups_pruned": len(kept),
        "kept_counts": sorted(set(kept)),
        "all_kept_multiple": all(k % args.multiple == 0 for k in kept),
    }
    source = f"uniform plan: keep {args.keep:g} of every prunable group (largest |gamma|)"
    return Variant(pruned, f"{source}, rounded up to a multiple of {args.multiple}", info)


def torchvision_subject(name: str, args: argparse.Namespace) -> Subject:
    """A torchvision model with seeded random weights and its uniform pruning."""
    torch.manual_seed(SEED)
    model = build_model(name, num_classes=1000, in_channels=3).eval()
    unpruned = Variant(model, f"torchvision {name}, random weights (weights=None, seed {SEED})")
    return Subject(name, IMAGENET_SHAPE, unpruned, uniform_pruned(model, IMAGENET_SHAPE, args), [])


def kept_checkpoint(run_dir: Path) -> tuple[Path | None, str]:
    """The model.pt of a run folder's kept iteration, or None and why not."""
    summary = RunFolder(run_dir).summary
    if not summary.is_file():
        return None, f"no {summary}"
    kept = int(read_json(summary)["kept"])
    if kept == 0:
        return None, f"{summary} keeps the baseline (no pruned iteration within tolerance)"
    path = RunFolder(run_dir).file(kept, "model.pt")
    return (path, f"kept iteration {kept} of {run_dir}") if path.is_file() else (None, f"no {path}")


def default_subject(args: argparse.Namespace) -> Subject:
    """The default Fashion-MNIST model: checkpoints if given or found, else random weights."""
    notes: list[str] = []
    if args.checkpoint is None:
        torch.manual_seed(SEED)
        model = build_model("vgg13_bn_small", num_classes=10, in_channels=1, width=0.25).eval()
        unpruned = Variant(model, f"vgg13_bn_small width 0.25, random weights (seed {SEED})")
        notes.append("no checkpoint given or found: random-weight vgg13_bn_small")
        return Subject(
            DEFAULT_MODEL, FMNIST_SHAPE, unpruned, uniform_pruned(model, FMNIST_SHAPE, args), notes
        )
    ckpt = load_checkpoint(args.checkpoint)
    shape = tuple(ckpt.input_shape)
    unpruned = Variant(ckpt.model.eval(), f"checkpoint {args.checkpoint}")
    pruned_path, why = args.pruned_checkpoint, "given by --pruned-checkpoint"
    if pruned_path is None:
        pruned_path, why = kept_checkpoint(args.checkpoint.parent.parent)
    if pruned_path is None:
        notes.append(f"no pruned checkpoint ({why}): the uniform plan prunes the checkpoint")
        return Subject(
            DEFAULT_MODEL, shape, unpruned, uniform_pruned(unpruned.model, shape, args), notes
        )
    pruned_ckpt = load_checkpoint(pruned_path)
    if tuple(pruned_ckpt.input_shape) != shape:
        raise SystemExit(
            f"{pruned_path} takes {pruned_ckpt.input_shape}, {args.checkpoint} {shape}"
        )
    pruned = Variant(pruned_ckpt.model.eval(), f"checkpoint {pruned_path} ({why})")
    return Subject(DEFAULT_MODEL, shape, unpruned, pruned, notes)


def make_subject(name: str, args: argparse.Namespace) -> Subject:
    """Build or load the model `name` and its pruned variant."""
    return default_subject(args) if name == DEFAULT_MODEL else torchvision_subject(name, args)


# ---------------------------------------------------------------- export


def random_images(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """n seeded random-normal images."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def export_variant(
    variant: Variant, shape: tuple[int, ...], stem: Path, args: argparse.Namespace
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Float and INT8 ONNX files of one model, with its size and float parity."""
    t0 = time.perf_counter()
    model = variant.model
    float_path = export_float(model, stem.with_name(stem.name + "_float.onnx"), shape)
    t1 = time.perf_counter()
    images = random_images(args.calibration_images, shape, SEED + 1)
    config = Int8Config(calibration="minmax", calibration_images=args.calibration_images)
    qmodel = quantize(model, images, config)
    t2 = time.perf_counter()
    int8_path = export_int8(qmodel, stem.with_name(stem.name + "_int8.onnx"))
    t3 = time.perf_counter()
    x = random_images(2, shape, SEED + 2)
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort_logits(ort_session(float_path, threads=1), x)
    info = {
        "source": variant.source,
        "plan": variant.plan,
        "params": count_params(model),
        "flops": count_flops(model, shape),
        "onnx_bytes": {"float": float_path.stat().st_size, "int8": int8_path.stat().st_size},
        "int8_weight_layers": int8_weight_layers(onnx.load(str(int8_path))),
        "float_onnx_max_abs_diff_vs_torch": float(np.abs(got - ref).max()),
        "seconds": {
            "export_float": t1 - t0,
            "quantize": t2 - t1,
            "export_int8": t3 - t2,
        },
    }
    return {"float": float_path, "int8": int8_path}, info


# ---------------------------------------------------------------- latency


def run_once(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    """Seconds of one session.run."""
    start = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - start


def summarize(times: list[float], batch: int, threads: int) -> Latency:
    """Median and 10th/90th percentiles of the timed runs, as prunewise reports them."""
    p10, median, p90 = np.percentile(np.asarray(times) * 1000.0, [10, 50, 90])
    return Latency(batch, threads, float(median), float(p10), float(p90), len(times))


def time_interleaved(
    sessions: dict[str, ort.InferenceSession],
    shape: tuple[int, ...],
    batch: int,
    threads: int,
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """Warm up every variant, then time them round by round (order rotated each round)."""
    x = np.random.default_rng(SEED).standard_normal((batch, *shape), dtype=np.float32)
    feeds = {v: {s.get_inputs()[0].name: x} for v, s in sessions.items()}
    names = list(sessions)
    rewarm = {}
    for v in names:
        warm = [run_once(sessions[v], feeds[v]) for _ in range(args.warmup_for[batch])]
        rewarm[v] = min(warm) < REWARM_BELOW_S
    times: dict[str, list[float]] = {v: [] for v in names}
    repeats = args.repeats_for[batch]
    i = 0
    while min(len(t) for t in times.values()) < repeats:
        for v in names[i % len(names) :] + names[: i % len(names)]:
            block = min(BLOCK, repeats - len(times[v])) if rewarm[v] else 1
            if rewarm[v] and block > 0:
                run_once(sessions[v], feeds[v])
            times[v] += [run_once(sessions[v], feeds[v]) for _ in range(block)]
        i += 1
        enough = min(len(t) for t in times.values()) >= 3
        if enough and max(sum(t) for t in times.values()) > args.max_seconds:
            break
    return {
        v: {
            **summarize(times[v], batch, threads).to_dict(),
            "rewarm": rewarm[v],
            "times_ms": [round(t * 1000.0, 4) for t in times[v]],
        }
        for v in names
    }


def ratios(lat: dict[str, dict[str, Any]], flops_ratio: float) -> dict[str, float]:
    """Speed-ups (median latency ratios) and their relation to the FLOPs ratio."""
    ms = {v: lat[v]["median_ms"] for v in VARIANTS}
    float_x = ms["unpruned_float"] / ms["pruned_float"]
    int8_x = ms["unpruned_int8"] / ms["pruned_int8"]
    return {
        "flops_ratio": flops_ratio,
        "speedup_pruned_float": float_x,
        "speedup_pruned_int8": int8_x,
        "speedup_over_flops_ratio_float": float_x / flops_ratio,
        "speedup_over_flops_ratio_int8": int8_x / flops_ratio,
        "int8_speedup_unpruned": ms["unpruned_float"] / ms["unpruned_int8"],
        "int8_speedup_pruned": ms["pruned_float"] / ms["pruned_int8"],
        "total_speedup": ms["unpruned_float"] / ms["pruned_int8"],
    }


def measure(
    paths: dict[str, Path], shape: tuple[int, ...], flops_ratio: float, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every (threads, batch) setting: the four variants' latencies and the derived ratios."""
    rows = []
    for threads in args.thread_list:
        t0 = time.perf_counter()
        sessions = {v: ort_session(paths[v], threads=threads) for v in VARIANTS}
        opened = time.perf_counter() - t0
        for batch in args.batch_list:
            t1 = time.perf_counter()
            lat = time_interleaved(sessions, shape, batch, threads, args)
            row = {
                "threads": threads,
                "batch": batch,
                "latency": lat,
                **ratios(lat, flops_ratio),
                "seconds": time.perf_counter() - t1,
            }
            rows.append(row)
            medians = " / ".join(f"{lat[v]['median_ms']:.2f}" for v in VARIANTS)
            print(
                f"  threads {threads}, batch {batch}: median ms {medians} "
                f"({lat[VARIANTS[0]]['runs']} rounds, {row['seconds']:.0f} s; sessions opened "
                f"in {opened:.1f} s)",
                flush=True,
            )
        del sessions
    return rows


# ---------------------------------------------------------------- one model


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build, prune, export and time one model."""
    print(f"\n{name}:", flush=True)
    t0 = time.perf_counter()
    subject = make_subject(name, args)
    for note in subject.notes:
        print(f"  note: {note}", flush=True)
    shape, notes = subject.input_shape, subject.notes
    paths: dict[str, Path] = {}
    sizes: dict[str, dict[str, Any]] = {}
    for key, variant in (("unpruned", subject.unpruned), ("pruned", subject.pruned)):
        files, info = export_variant(variant, shape, work / f"{name}_{key}", args)
        paths[f"{key}_float"], paths[f"{key}_int8"] = files["float"], files["int8"]
        sizes[key] = info
        s = info["seconds"]
        print(
            f"  {key}: {info['params'] / 1e6:.2f}M params, {info['flops'] / 1e9:.3f} GMACs; "
            f"export {s['export_float']:.1f} s, quantize {s['quantize']:.1f} s, "
            f"INT8 export {s['export_int8']:.1f} s; float ONNX vs torch max |diff| "
            f"{info['float_onnx_max_abs_diff_vs_torch']:.2e}",
            flush=True,
        )
    del subject
    flops_ratio = sizes["unpruned"]["flops"] / sizes["pruned"]["flops"]
    print(f"  FLOPs ratio {flops_ratio:.2f}; timing {', '.join(VARIANTS)}", flush=True)
    prepared = time.perf_counter() - t0
    rows = measure(paths, shape, flops_ratio, args)
    if args.work is None:
        for path in paths.values():
            path.unlink(missing_ok=True)
    return {
        "model": name,
        "input_shape": list(shape),
        "notes": notes,
        "unpruned": sizes["unpruned"],
        "pruned": sizes["pruned"],
        "flops_ratio": flops_ratio,
        "settings": rows,
        "seconds": {"prepare": prepared, "total": time.perf_counter() - t0},
    }


# ---------------------------------------------------------------- output


def print_tables(entries: list[dict[str, Any]]) -> None:
    """Median latencies and the derived ratios, one block per model."""
    head = (
        f"{'thr':>3} {'batch':>5} | {'float ms unpr':>13} {'pruned':>9} | "
        f"{'int8 ms unpr':>12} {'pruned':>9} | {'prune x f':>9} {'i8':>5} | "
        f"{'x/FLOPs f':>9} {'i8':>5} | {'int8 x unpr':>11} {'pruned':>6} | {'total':>6}"
    )
    for e in entries:
        u, p = e["unpruned"], e["pruned"]
        print(
            f"\n{e['model']} {tuple(e['input_shape'])}: {u['flops'] / 1e9:.3f} -> "
            f"{p['flops'] / 1e9:.3f} GMACs (FLOPs ratio {e['flops_ratio']:.2f}), "
            f"{u['params'] / 1e6:.2f}M -> {p['params'] / 1e6:.2f}M params"
        )
        print(head + "\n" + "-" * len(head))
        for r in e["settings"]:
            ms = {v: r["latency"][v]["median_ms"] for v in VARIANTS}
            print(
                f"{r['threads']:>3} {r['batch']:>5} | {ms['unpruned_float']:>13.2f} "
                f"{ms['pruned_float']:>9.2f} | {ms['unpruned_int8']:>12.2f} "
                f"{ms['pruned_int8']:>9.2f} | {r['speedup_pruned_float']:>9.2f} "
                f"{r['speedup_pruned_int8']:>5.2f} | {r['speedup_over_flops_ratio_float']:>9.2f} "
                f"{r['speedup_over_flops_ratio_int8']:>5.2f} | {r['int8_speedup_unpruned']:>11.2f} "
                f"{r['int8_speedup_pruned']:>6.2f} | {r['total_speedup']:>6.2f}"
            )
    print(
        "\nms: median per session.run. prune x: unpruned / pruned latency (float, INT8). "
        "x/FLOPs: that speed-up / FLOPs ratio.\nint8 x: float / INT8 latency (unpruned, pruned). "
        "total: unpruned float / pruned INT8."
    )


def find_row(entry: dict[str, Any], threads: int, batch: int) -> dict[str, Any] | None:
    """The measured (threads, batch) setting of a model, if any."""
    for r in entry["settings"]:
        if r["threads"] == threads and r["batch"] == batch:
            return r
    return None


def acceptance(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """resnet50: pruned speed-up / FLOPs ratio >= 0.9 at 2 threads; INT8 >= 1.3x at batch 1."""
    entry = next((e for e in entries if e["model"] == "resnet50"), None)
    checks = [
        ("pruned float speed-up / FLOPs ratio", 2, 1, "speedup_over_flops_ratio_float", 0.9),
        ("pruned float speed-up / FLOPs ratio", 2, 32, "speedup_over_flops_ratio_float", 0.9),
        ("INT8 speed-up over float, unpruned", 2, 1, "int8_speedup_unpruned", 1.3),
        ("INT8 speed-up over float, pruned", 2, 1, "int8_speedup_pruned", 1.3),
        ("INT8 speed-up over float, unpruned", 1, 1, "int8_speedup_unpruned", 1.3),
        ("INT8 speed-up over float, pruned", 1, 1, "int8_speedup_pruned", 1.3),
    ]
    out = []
    for label, threads, batch, key, threshold in checks:
        row = find_row(entry, threads, batch) if entry else None
        value = row[key] if row else None
        verdict = "not measured" if value is None else ("PASS" if value >= threshold else "FAIL")
        out.append(
            {
                "check": f"resnet50 {label}, threads={threads}, batch={batch}: >= {threshold}",
                "key": key,
                "threads": threads,
                "batch": batch,
                "threshold": threshold,
                "value": value,
                "result": verdict,
            }
        )
    return out


def print_acceptance(checks: list[dict[str, Any]]) -> None:
    """The acceptance block: measured value and PASS / FAIL per check."""
    print("\nacceptance:")
    width = max(len(c["check"]) for c in checks)
    for c in checks:
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        print(f"  {c['check']:<{width}} {value:>6}  {c['result']}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON (after each model)."""
    args = parse_args(argv)
    machine = machine_info()
    load_start = os.getloadavg()
    print(f"machine: {machine}, load average: {load_start}", flush=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "deploy_speed",
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
        "machine": machine,
        "settings": {
            "models": args.model_list,
            "batch_sizes": args.batch_list,
            "threads": args.thread_list,
            "warmup": {str(b): n for b, n in args.warmup_for.items()},
            "repeats": {str(b): n for b, n in args.repeats_for.items()},
            "max_seconds": args.max_seconds,
            "rewarm_below_seconds": REWARM_BELOW_S,
            "keep": args.keep,
            "multiple": args.multiple,
            "calibration": "minmax",
            "calibration_images": args.calibration_images,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "pruned_checkpoint": str(args.pruned_checkpoint) if args.pruned_checkpoint else None,
            "seed": SEED,
            "quick": args.quick,
        },
        "notes": NOTES,
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="deploy_speed_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.model_list:
            report["models"].append(bench_model(name, args, work))
            report["acceptance"] = acceptance(report["models"])
            report["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
            report["total_wall_seconds"] = time.perf_counter() - started
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report["models"])
    print_acceptance(report["acceptance"])
    print(f"\ntotal {report['total_wall_seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
