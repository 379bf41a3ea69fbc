"""Time prunewise against Torch-Pruning 1.6.1 on one uniform |gamma| pruning step.

For each torchvision model (random weights, eval mode, one 3x224x224 example), both tools do
"rank each prunable channel group by BatchNorm |gamma|, remove half, then surgery":

- prunewise: build_channel_graph + uniform_plan(0.5) + apply_plan, once with prune_tied=True
  (residual-tied groups pruned jointly, as Torch-Pruning does) and once with the default
  prune_tied=False (tied groups left alone).
- Torch-Pruning: MetaPruner(BNScaleImportance, pruning_ratio=0.5, local ranking, final Linear
  ignored) construction (which builds the DependencyGraph) + step().

Every timed run gets a freshly built model (not timed) with the same seed. Per model, one warm-up
round, then `--repeats` rounds; each round runs every tool once (interleaved, so a change in
machine load hits all tools alike) and the median per tool is reported. Each pruned model then
runs one forward pass (not timed). Results are printed and written as JSON.

Run: `make bench-deps` then `.venv/bin/python bench/prune_speed.py`.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
import torchvision
from torch import nn

from prunewise.analysis import count_flops, count_params
from prunewise.graph import build_channel_graph
from prunewise.prune import apply_plan, uniform_plan

INPUT_SHAPE = (3, 224, 224)
RATIO = 0.5
SEED = 0
PW_TIED = "prunewise (prune_tied=True)"
PW_UNTIED = "prunewise (prune_tied=False)"
TP_NAME = "Torch-Pruning 1.6.1"
TOOLS = (PW_TIED, PW_UNTIED, TP_NAME)

NOTES = [
    "prunewise copies the model: apply_plan returns a new torch.fx.GraphModule and the original "
    "stays intact. Torch-Pruning prunes the model in place.",
    "prunewise seconds = build_channel_graph + uniform_plan + apply_plan (default verify=True, "
    "which propagates the example's shapes through the pruned model). Torch-Pruning seconds = "
    "MetaPruner constructor (DependencyGraph.build_dependency and pruner set-up) + step(). "
    "prunewise finds shapes on meta tensors (no arithmetic, both when building the graph and "
    "when verifying); Torch-Pruning runs one real forward pass of the example to build its graph.",
    "Model construction, parameter/FLOP counting and the post-pruning forward check are not "
    "timed. Each timed run starts from a freshly built model (same seed). Tools are interleaved: "
    "one warm-up round, then each round runs every tool once; medians per tool.",
    "The CPU may be shared with other jobs: load_average gives /proc/loadavg (1, 5, 15 min) at "
    "the start and end of the run.",
    "FLOPs are multiply-accumulates per image at 224x224 counted by prunewise.analysis."
    "count_flops (fvcore convention) for both tools' models; params by count_params.",
    "Torch-Pruning: tp.pruner.MetaPruner (in 1.6.1 an alias of BasePruner), "
    "importance=BNScaleImportance(), pruning_ratio=0.5, global_pruning=False (per-group "
    "ranking), ignored_layers=[final classifier Linear]; groups without a BatchNorm are skipped "
    "by this importance, as prunewise leaves them unchanged.",
    "groups_pruned = groups that lost channels: prunewise plan decisions with removed > 0; "
    "Torch-Pruning groups yielded by step(interactive=True) and pruned.",
    "torchvision initialises every BatchNorm gamma to 1, which makes |gamma| ranking a tie; "
    "unless --unit-gamma is given, gammas are redrawn uniformly from [0.05, 1) with a fixed "
    "seed (untimed) so both tools rank real values. max_abs_diff_vs_torch_pruning compares the "
    "logits of each prunewise model with Torch-Pruning's on the same random input.",
]


@dataclass
class Run:
    """One timed pruning run: total seconds, seconds per phase, the pruned model."""

    seconds: float
    phases: dict[str, float]
    model: nn.Module
    groups_pruned: int


@dataclass
class ToolResult:
    """Median timing over repeats plus the last run's pruned model."""

    seconds: float
    all_seconds: list[float]
    phases: dict[str, float]
    last: Run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,resnet101,vgg13_bn", help="torchvision names")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per tool (median kept)")
    p.add_argument("--out", type=Path, default=Path("bench/results/prune_speed.json"))
    p.add_argument(
        "--unit-gamma", action="store_true", help="keep torchvision's gamma=1 init (all ties)"
    )
    return p.parse_args(argv)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform's answer)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, cores, threads and library versions."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_pruning": importlib.metadata.version("torch-pruning"),
        "torch_pruning_module_version": tp.__version__,
        "prunewise": importlib.metadata.version("prunewise"),
    }


def make_model(name: str, unit_gamma: bool) -> nn.Module:
    """A fresh torchvision model with seeded random weights, in eval mode."""
    torch.manual_seed(SEED)
    model = getattr(torchvision.models, name)(weights=None).eval()
    if not unit_gamma:
        gen = torch.Generator().manual_seed(SEED + 1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.95 + 0.05)
    return model


def classifier(model: nn.Module) -> nn.Linear:
    """The model's final Linear layer."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def example_input() -> torch.Tensor:
    """The batch-1 example, the same for every run."""
    return torch.randn((1, *INPUT_SHAPE), generator=torch.Generator().manual_seed(SEED))


def run_prunewise(model: nn.Module, prune_tied: bool) -> Run:
    """build_channel_graph + uniform_plan + apply_plan, timed per phase."""
    t0 = time.perf_counter()
    graph = build_channel_graph(model, INPUT_SHAPE)
    t1 = time.perf_counter()
    plan = uniform_plan(graph, RATIO, prune_tied=prune_tied)
    t2 = time.perf_counter()
    pruned = apply_plan(graph, plan)
    t3 = time.perf_counter()
    phases = {"build_channel_graph": t1 - t0, "uniform_plan": t2 - t1, "apply_plan": t3 - t2}
    groups = sum(1 for d in plan.decisions if d.removed)
    return Run(t3 - t0, phases, pruned, groups)


def run_torch_pruning(model: nn.Module) -> Run:
    """MetaPruner construction (DependencyGraph) + one step, timed per phase."""
    example = example_input()
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.BNScaleImportance(),
        pruning_ratio=RATIO,
        global_pruning=False,
        ignored_layers=[classifier(model)],
    )
    t1 = time.perf_counter()
    groups = 0
    for group in pruner.step(interactive=True):
        group.prune()
        groups += 1
    t2 = time.perf_counter()
    return Run(t2 - t0, {"MetaPruner.__init__": t1 - t0, "step": t2 - t1}, model, groups)


def runner_for(tool: str) -> Callable[[nn.Module], Run]:
    """The function that prunes a model with `tool`."""
    if tool == PW_TIED:
        return lambda m: run_prunewise(m, prune_tied=True)
    if tool == PW_UNTIED:
        return lambda m: run_prunewise(m, prune_tied=False)
    return run_torch_pruning


def time_tools(name: str, repeats: int, unit_gamma: bool) -> dict[str, ToolResult]:
    """One warm-up round, then `repeats` rounds, each running every tool once on fresh models.

    Interleaving the tools round by round spreads any change in machine load over all of them.
    """
    runners = {tool: runner_for(tool) for tool in TOOLS}
    seconds: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    phases: dict[str, list[dict[str, float]]] = {tool: [] for tool in TOOLS}
    last: dict[str, Run] = {}
    for i in range(repeats + 1):
        label = "warm-up" if i == 0 else f"run {i}/{repeats}"
        for tool in TOOLS:
            model = make_model(name, unit_gamma)
            gc.collect()
            run = runners[tool](model)
            print(f"  {tool:<29} {label:<9} {run.seconds:7.3f} s", flush=True)
            if i:
                seconds[tool].append(run.seconds)
                phases[tool].append(run.phases)
            last[tool] = run
            del model
    results = {}
    for tool in TOOLS:
        ph = phases[tool]
        median_phases = {k: statistics.median(p[k] for p in ph) for k in ph[0]}
        results[tool] = ToolResult(
            statistics.median(seconds[tool]), seconds[tool], median_phases, last[tool]
        )
    return results


def size_of(model: nn.Module) -> dict[str, int]:
    """Parameters and FLOPs (MACs per image)."""
    return {"params": count_params(model), "flops": count_flops(model, INPUT_SHAPE)}


@torch.no_grad()
def forward(model: nn.Module) -> torch.Tensor:
    """Logits of the pruned model on a fixed random (1, 3, 224, 224) input."""
    x = torch.randn((1, *INPUT_SHAPE), generator=torch.Generator().manual_seed(SEED + 2))
    return model.eval()(x)


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time every tool on one model and describe the pruned models."""
    print(f"{name}:", flush=True)
    before = size_of(make_model(name, args.unit_gamma))
    results = time_tools(name, args.repeats, args.unit_gamma)
    tp_seconds = results[TP_NAME].seconds
    logits = {tool: forward(r.last.model) for tool, r in results.items()}
    entry: dict[str, Any] = {"model": name, "before": before, "tools": {}}
    for tool, r in results.items():
        diff = (logits[tool] - logits[TP_NAME]).abs().max().item()
        entry["tools"][tool] = {
            "seconds": r.seconds,
            "seconds_all": r.all_seconds,
            "phases_median_seconds": r.phases,
            "ratio_vs_torch_pruning": r.seconds / tp_seconds,
            "before": before,
            "after": size_of(r.last.model),
            "groups_pruned": r.last.groups_pruned,
            "output_shape": list(logits[tool].shape),
            "max_abs_diff_vs_torch_pruning": diff,
        }
    return entry


def print_table(entries: list[dict[str, Any]]) -> None:
    """The result table (seconds are medians)."""
    head = (
        f"{'model':<10} {'tool':<29} {'seconds':>8} {'pw/TP':>6} {'params before -> after':>24} "
        f"{'GMACs before -> after':>22} {'groups':>6} {'output':>10}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for e in entries:
        for tool, t in e["tools"].items():
            ratio = "" if tool == TP_NAME else f"{t['ratio_vs_torch_pruning']:.2f}"
            params = f"{t['before']['params'] / 1e6:.2f}M -> {t['after']['params'] / 1e6:.2f}M"
            flops = f"{t['before']['flops'] / 1e9:.3f} -> {t['after']['flops'] / 1e9:.3f}"
            shape = "x".join(str(d) for d in t["output_shape"])
            print(
                f"{e['model']:<10} {tool:<29} {t['seconds']:8.3f} {ratio:>6} {params:>24} "
                f"{flops:>22} {t['groups_pruned']:>6} {shape:>10}"
            )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    machine = machine_info()
    load_start = os.getloadavg()
    print(f"machine: {machine}, load average: {load_start}", flush=True)
    started = time.perf_counter()
    entries = [bench_model(n.strip(), args) for n in args.models.split(",") if n.strip()]
    print_table(entries)
    report = {
        "benchmark": "prune_speed",
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
        "machine": machine,
        "settings": {
            "input": [1, *INPUT_SHAPE],
            "ratio": RATIO,
            "seed": SEED,
            "repeats": args.repeats,
            "warmup_runs": 1,
            "gamma": "torchvision init (all 1)" if args.unit_gamma else "uniform [0.05, 1)",
        },
        "notes": NOTES,
        "models": entries,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "total_wall_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
