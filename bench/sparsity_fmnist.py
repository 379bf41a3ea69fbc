"""Fine-grained sparsity on real Fashion-MNIST: issue 6's three measurements in one run.

(a) unstructured magnitude vs balanced (g = 16) vs 2:4 at the same sparsity, same fine-tuning;
(b) reversed + peak pruning + INT8 values + best storage: compression ratio and accuracy cost;
(c) PE-array speed-up of balanced over unstructured masks at the same ratio (P = 16).

Every job is a `prunewise train` / `prunewise sparsify` command (printed and recorded); the
folders stay under --work, the summary goes to bench/results/sparsity_fmnist.json. `--seeds 0,1,2`
repeats the (a) jobs with other fine-tuning seeds (folders `<job>_s<seed>`) and summarises each
method as mean and std over the seeds, with balanced - magnitude paired by seed. A re-run reads
the finished jobs and appends its commands to those already in the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from _record import header

from prunewise.cli import main as prunewise

RESULTS = Path("bench/results/sparsity_fmnist.json")


def _run(argv: list[str]) -> float:
    """Run one prunewise command in this process; its wall time in seconds."""
    print("$ prunewise " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    code = prunewise(argv)
    if code != 0:
        raise SystemExit(f"prunewise {argv[0]} failed with status {code}")
    return time.perf_counter() - t0


def _read(folder: Path) -> dict[str, Any]:
    rec = json.loads((folder / "sparsify.json").read_text())
    st = json.loads((folder / "storage.json").read_text())
    pe = json.loads((folder / "pe_array.json").read_text())
    return {
        "baseline_test_acc": rec["baseline"]["test_acc"],
        "test_acc": rec["final"]["test_acc"],
        "stored_test_acc": st["test_acc"],
        "overall_sparsity": rec["overall_sparsity"],
        "compression_ratio": st["ratio"],
        "dense_fp32_bytes": st["dense_fp32_bytes"],
        "compressed_bytes": st["compressed_bytes"],
        "file_bytes": st["file_bytes"],
        "read_back_exact": st["read_back_exact"],
        "pe_balanced_over_unstructured": pe["balanced_over_unstructured"],
        "pe_unstructured_speedup_over_dense": pe["total"]["unstructured"]["speedup"],
        "pe_balanced_speedup_over_dense": pe["total"]["balanced"]["speedup"],
    }


def _epochs(folder: Path) -> int:
    """Fine-tune epochs a finished sparsify job spent in all (stages x epochs per stage)."""
    rec = json.loads((folder / "sparsify.json").read_text())
    cfg = json.loads((folder / "config.json").read_text())
    return len(rec["stages"]) * int(cfg["settings"]["finetune_epochs"])


def _seeded(job: str, seed: int) -> str:
    """Folder name of an (a) job at a seed: seed 0 keeps the plain name."""
    return job if seed == 0 else f"{job}_s{seed}"


def _over_seeds(results: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Test accuracy of each (a) job over its seeds; balanced/nm minus magnitude, paired by seed."""
    acc: dict[str, dict[int, float]] = {}
    for key, r in results.items():
        m = re.fullmatch(r"(.+)_s(\d+)", key)
        base, seed = (m.group(1), int(m.group(2))) if m else (key, 0)
        if base in names:
            acc.setdefault(base, {})[seed] = r["test_acc"]
    out: dict[str, Any] = {}
    for job, by_seed in acc.items():
        vals = list(by_seed.values())
        row = {"seeds": sorted(by_seed), "mean": statistics.fmean(vals),
               "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}  # fmt: skip
        ref = acc.get("magnitude_80" if job.endswith("_80") else "magnitude_50", {})
        diffs = [a - ref[k] for k, a in by_seed.items() if k in ref]
        if not job.startswith("magnitude") and diffs:
            row["minus_magnitude"] = diffs
            row["minus_magnitude_mean"] = statistics.fmean(diffs)
            row["minus_magnitude_std"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        out[job] = row
    return out


def main(argv: list[str] | None = None) -> int:
    """Train the baselines (or reuse them), run every sparsify job, save the summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/sparsity_fmnist", help="folder for the jobs")
    p.add_argument("--epochs", type=int, default=3, help="baseline epochs (3)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="per stage (1)")
    p.add_argument("--vgg-baseline", default="runs/default/baseline/model.pt", help="reuse")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--seeds", default="0", help="seeds of the (a) jobs, comma-separated (0)")
    p.add_argument(
        "--only",
        default="",
        metavar="MODEL/JOB,...",
        help="run only these jobs (e.g. vgg13_bn_small/nm_2of4); finished jobs are always read",
    )
    args = p.parse_args(argv)
    work = Path(args.work)
    common = ["--no-progress", "--finetune-epochs", str(args.finetune_epochs)]
    models = {"alexnet_small": work / "alexnet_small.pt", "vgg13_bn_small": Path(args.vgg_baseline)}
    commands: list[str] = []
    seconds: dict[str, float] = {}
    only = {s for s in args.only.split(",") if s}
    for name, ckpt in models.items():
        needed = not only or any(job.startswith(f"{name}/") for job in only)
        if needed and not ckpt.is_file():
            argv_ = ["train", "--model", name, "--width", "0.25", "--epochs", str(args.epochs),
                     "--no-progress", "--out", str(ckpt)]  # fmt: skip
            commands.append(" ".join(argv_))
            seconds[f"train {name}"] = _run(argv_)
    jobs = {
        "magnitude_50": ["--method", "magnitude", "--sparsity", "0.5"],
        "balanced16_50": ["--method", "balanced", "--sparsity", "0.5", "--group", "16"],
        "nm_2of4": ["--method", "nm", "--nm", "2:4"],
        "magnitude_80": ["--method", "magnitude", "--sparsity", "0.8"],
        "balanced16_80": ["--method", "balanced", "--sparsity", "0.8", "--group", "16"],
    }
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results: dict[str, Any] = {}
    for name, ckpt in models.items():
        todo = {_seeded(job, seed): [*extra, "--seed", str(seed)] if seed else list(extra)
                for seed in seeds for job, extra in jobs.items()}  # fmt: skip
        todo["reversed_peak_int8"] = ["--method", "reversed", "--peak", "--delta", "0.5"]
        if name == "alexnet_small":
            todo["peak_int8"] = ["--method", "peak", "--delta", "0.5", "--max-rounds", "2"]
        # the dense control gets as many fine-tune epochs as the reversed job had in all
        todo["dense_control"] = ["--method", "magnitude", "--sparsity", "0"]
        for job, extra in todo.items():
            folder = work / name / job
            wanted = not only or f"{name}/{job}" in only
            argv_ = ["sparsify", "--checkpoint", str(ckpt), *common, *extra]
            if job == "dense_control":
                reversed_ = work / name / "reversed_peak_int8"
                if not (reversed_ / "sparsify.json").is_file():
                    continue  # its epochs are those of the reversed job, not done yet
                argv_ += ["--finetune-epochs", str(_epochs(reversed_))]
            argv_ += ["--out", str(folder)]
            if not (folder / "sparsify.json").is_file() and wanted:
                if (folder / "config.json").is_file():  # an interrupted job: continue it
                    argv_.append("--resume")
                commands.append(" ".join(argv_))
                seconds[f"{name} {job}"] = _run(argv_)
            if (folder / "sparsify.json").is_file():
                results.setdefault(name, {})[job] = {"command": " ".join(argv_), **_read(folder)}
    out = Path(args.out)
    runs = json.loads(out.read_text()).get("runs", []) if out.is_file() else []
    run = {**header(commands), "seconds": seconds}
    record = {**run, "runs": [*runs, run], "results": results}
    record["seeds"] = {name: _over_seeds(jobs_, list(jobs)) for name, jobs_ in results.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for name, jobs_ in results.items():
        print(f"\n{name}")
        for job, r in jobs_.items():
            print(
                f"  {job:20s} sparsity {r['overall_sparsity']:.3f}  test {r['test_acc']:.2f} "
                f"(base {r['baseline_test_acc']:.2f}, stored {r['stored_test_acc']:.2f})  "
                f"{r['compression_ratio']:.1f}x  "
                f"PE bal/unstr {r['pe_balanced_over_unstructured']:.2f}"
            )
    for name, rows in record["seeds"].items():
        for job, r in rows.items():
            print(
                f"  {name} {job:20s} over seeds {r['seeds']}: "
                f"test {r['mean']:.2f} +- {r['std']:.2f}"
                + (
                    f", minus magnitude {r['minus_magnitude_mean']:+.2f} "
                    f"+- {r['minus_magnitude_std']:.2f}"
                    if "minus_magnitude_mean" in r
                    else ""
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
