"""Hardware-aware pruning on real Fashion-MNIST: kept channel counts rounded to the DPU's channel
parallelism or not, at the same accuracy budget, and the modelled DPU fps of each kept model.

Two `prunewise run`s from the same trained baseline (default `runs/default/baseline/model.pt`,
as `make run` leaves it), identical but for `--round-to` (1, and the board's channel
parallelism: 16 on zcu102's B4096). Each stops by the same tolerance; the kept models are
modelled on zcu102 and zcu104 with 1 and 2 threads. Finished runs are read, interrupted ones
resumed; the summary goes to bench/results/dpu_round_to.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _record import header

from prunewise.cli import main as prunewise
from prunewise.hw.dpu import dpu_summary, load_devices
from prunewise.io import load_checkpoint

RESULTS = Path("bench/results/dpu_round_to.json")


def _kept(folder: Path) -> dict[str, Any]:
    """The kept iteration of a finished run and the DPU model of it and of the baseline."""
    summary = json.loads((folder / "summary.json").read_text())
    kept = int(summary["kept"])
    row = summary["baseline"] if kept == 0 else summary["iterations"][kept - 1]
    stage = "baseline" if kept == 0 else f"iter_{kept:02d}"
    base = load_checkpoint(folder / "baseline" / "model.pt")
    model = load_checkpoint(folder / stage / "model.pt")
    devices = load_devices()
    fps: dict[str, Any] = {}
    for board_name in ("zcu102", "zcu104"):
        board = devices.board(board_name)
        a = dpu_summary(base.model, base.input_shape, board, (1, 2))
        b = dpu_summary(model.model, model.input_shape, board, (1, 2))
        fps[board_name] = {
            "baseline": {str(n): v for n, v in a.fps.items()},
            "kept": {str(n): v for n, v in b.fps.items()},
            "speedup": {str(n): b.fps[n] / a.fps[n] for n in a.fps},
            "kept_gops": b.gops,
            "baseline_gops": a.gops,
        }
    channels = {layer: counts[kept] for layer, counts in summary["channels"].items()}
    return {
        "kept_iteration": kept,
        "stopped": summary["stopped"],
        "val_acc": row.get("val_acc"),
        "test_acc": row.get("test_acc"),
        "baseline_val_acc": summary["baseline"]["val_acc"],
        "baseline_test_acc": summary["baseline"]["test_acc"],
        "flops_reduction": row.get("flops_reduction", 0.0),
        "params_reduction": row.get("params_reduction", 0.0),
        "channels": channels,
        "dpu": fps,
    }


def main(argv: list[str] | None = None) -> int:
    """Run (or read) both variants and save the comparison."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="runs/default/baseline/model.pt", help="trained model")
    p.add_argument("--work", default="runs/dpu_round_to", help="folder for the two runs")
    p.add_argument("--board", default="zcu102", help="board whose parallelism is rounded to")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    variants = {"round_to_1": "1", f"round_to_{args.board}": args.board}
    commands, seconds, results = [], {}, {}
    for name, value in variants.items():
        folder = Path(args.work) / name
        if not (folder / "summary.json").is_file() or not (folder / "dpu").is_dir():
            if (folder / "config.json").is_file():
                argv_ = ["run", "--resume", str(folder)]
            else:
                argv_ = ["run", "--baseline", args.baseline, "--round-to", value, "--no-deploy",
                         "--no-progress", "--out", str(folder)]  # fmt: skip
            print("$ prunewise " + " ".join(argv_), flush=True)
            commands.append(" ".join(argv_))
            t0 = time.perf_counter()
            if prunewise(argv_) != 0:
                raise SystemExit(f"prunewise run failed for {name}")
            seconds[name] = time.perf_counter() - t0
        results[name] = _kept(folder)
    record = {**header(commands), "seconds": seconds, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for name, r in results.items():
        d = r["dpu"][args.board]
        print(
            f"{name:18s} kept iter {r['kept_iteration']}: val {r['val_acc']:.2f} % "
            f"(base {r['baseline_val_acc']:.2f}), test {r['test_acc']:.2f} %, FLOPs "
            f"-{100 * r['flops_reduction']:.1f} %; {args.board} fps 1t "
            f"{d['kept']['1']:.0f} ({d['speedup']['1']:.2f}x), 2t {d['kept']['2']:.0f} "
            f"({d['speedup']['2']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
