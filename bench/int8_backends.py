"""INT8 backends side by side: prunewise's quantizer against ONNX Runtime's quantize_static.

For every model, one float ONNX file (prunewise.export.export_float, the dynamo exporter) is
the common starting point, and the same calibration images feed both quantizers, each with
minmax and with percentile (99.99) calibration, 7-bit per-channel symmetric weights and uint8
per-tensor activations (prunewise's defaults):

- prunewise: prunewise.quant.quantize (BatchNorm folded) + prunewise.export.export_int8 (QDQ);
- ONNX Runtime: prunewise.export.ort_quantize, i.e. onnxruntime.quantization.quant_pre_process
  and quantize_static (QDQ, per_channel=True, reduce_range=True).

Models: the `make run` baseline and kept model (--run, Fashion-MNIST), a ResNet-20 on
Fashion-MNIST (--resnet20; trained by `prunewise train` when the file is missing), and
torchvision resnet50 and mobilenet_v2 at 224 px with random weights (speed and size only).
Measured per INT8 file: test accuracy and top-1 agreement with the float ONNX model on the
whole Fashion-MNIST test set, the operators ONNX Runtime runs after its graph optimisation
(QLinearConv / QGemm / float Conv left), ONNX Runtime latency at batch 1 with 1 and 2 threads
(variants of one model timed interleaved, as bench/deploy_speed.py does), and file bytes.

Run: `.venv/bin/python bench/int8_backends.py` (about 10 minutes on 2 idle cores plus
ResNet-20's training when it is missing); `--quick` is a smoke run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from _record import header
from deploy_speed import kept_checkpoint, machine_info, random_images, time_interleaved

from prunewise.analysis import count_flops, count_params
from prunewise.data import sample_images
from prunewise.export import (
    export_float,
    export_int8,
    optimized_ops,
    ort_logits,
    ort_quantize,
    ort_session,
)
from prunewise.models import build_model
from prunewise.pipeline.inputs import InputsConfig, load_inputs
from prunewise.quant import Int8Config, quantize
from prunewise.records.folder import RunFolder

SEED = 0
IMAGENET = ("resnet50", "mobilenet_v2")
METHODS = ("minmax", "percentile")  # the calibrations both quantizers offer
DEFAULT_OUT = Path("bench/results/int8_backends.json")
RESNET20_TRAIN = ["--model", "resnet20", "--epochs", "3", "--limit", "20000", "--no-progress"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/default"), help="make run's folder")
    p.add_argument("--resnet20", type=Path, default=Path("runs/int8_backends/resnet20.pt"))
    p.add_argument("--imagenet", default=",".join(IMAGENET), help="torchvision models, 224 px")
    p.add_argument("--methods", default=",".join(METHODS), help="calibrations to compare")
    p.add_argument("--calibration-images", type=int, default=256, help="per model (256)")
    p.add_argument("--threads", default="1,2", help="ORT intra-op threads to time")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per variant (30)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="timing budget per variant")
    p.add_argument("--work", type=Path, default=Path("runs/int8_backends"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="smoke run: no ImageNet models")
    args = p.parse_args(argv)
    args.thread_list = [int(t) for t in args.threads.split(",")]
    args.method_list = [m for m in args.methods.split(",") if m]
    unknown = set(args.method_list) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; choose from {sorted(METHODS)}")
    if args.quick:
        args.imagenet, args.repeats, args.calibration_images = "", 5, 32
    args.warmup_for, args.repeats_for = {1: 3}, {1: args.repeats}
    return args


# ---------------------------------------------------------------- models


def fmnist_subjects(args: argparse.Namespace, commands: list[str]) -> list[dict[str, Any]]:
    """make run's baseline and kept model, and ResNet-20 (trained here when missing)."""
    found = []
    baseline = RunFolder(args.run).file(0, "model.pt")
    if baseline.is_file():
        found.append(("make_run_baseline", baseline))
        kept, why = kept_checkpoint(args.run)
        if kept is not None:
            found.append(("make_run_kept", kept))
        else:
            print(f"no kept model: {why}", flush=True)
    else:
        print(f"no {baseline}: run `make run` first for make run's models", flush=True)
    if not args.resnet20.is_file():
        cmd = [sys.executable, "-m", "prunewise", "train", *RESNET20_TRAIN]
        cmd += ["--out", str(args.resnet20)]
        print("training ResNet-20:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        commands.append(" ".join(["prunewise", *cmd[3:]]))
    found.append(("resnet20", args.resnet20))
    subjects = []
    for name, path in found:
        loaded = load_inputs(InputsConfig(checkpoint=str(path), device="cpu"))
        test = loaded.data.test
        images = torch.stack([test[i][0] for i in range(len(test))])
        labels = np.asarray([int(test[i][1]) for i in range(len(test))])
        calib = sample_images(loaded.data.val, args.calibration_images, SEED)
        subjects.append(
            {"name": name, "source": str(path), "model": loaded.model.eval(),
             "shape": tuple(loaded.input_shape), "calib": calib, "test": (images, labels)}
        )  # fmt: skip
    return subjects


def imagenet_subject(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """A torchvision model with random weights (seed 0): speed and bytes only."""
    torch.manual_seed(SEED)
    model = build_model(name, num_classes=1000, in_channels=3).eval()
    shape = (3, 224, 224)
    n = min(args.calibration_images, 32)
    calib = random_images(n, shape, SEED + 1)
    return {"name": name, "source": f"torchvision {name}, random weights (seed {SEED})",
            "model": model, "shape": shape, "calib": calib, "test": None}  # fmt: skip


# ---------------------------------------------------------------- INT8 files


def build_files(subject: dict[str, Any], args: argparse.Namespace) -> dict[str, dict]:
    """The float file, then one INT8 file per (backend, calibration), with build seconds."""
    folder = args.work / subject["name"]
    folder.mkdir(parents=True, exist_ok=True)
    model, shape, calib = subject["model"], subject["shape"], subject["calib"]
    files: dict[str, dict] = {}
    t0 = time.perf_counter()
    float_path = export_float(model, folder / "float.onnx", shape)
    files["float"] = {"path": float_path, "seconds": time.perf_counter() - t0}
    methods = args.method_list if subject["test"] is not None else ["percentile"]
    for backend in ("prunewise", "onnxruntime"):
        for method in methods:
            t0 = time.perf_counter()
            config = Int8Config(calibration=method, calibration_images=len(calib), backend=backend)
            qmodel = quantize(model, calib, config) if backend == "prunewise" else None
            name = f"{'ort' if backend == 'onnxruntime' else 'prunewise'}_{method}"
            path = folder / f"{name}.onnx"
            if qmodel is None:
                ort_quantize(float_path, calib, config, path)
            else:
                export_int8(qmodel, path)
            files[name] = {"path": path, "seconds": time.perf_counter() - t0,
                           "config": asdict(config)}  # fmt: skip
    return files


# ---------------------------------------------------------------- measurements


def accuracy(files: dict[str, dict], test: tuple[torch.Tensor, np.ndarray]) -> None:
    """Test accuracy (%) and top-1 agreement with the float ONNX model, into `files`."""
    images, labels = test
    top1 = {
        v: ort_logits(ort_session(f["path"], threads=2), images).argmax(1) for v, f in files.items()
    }
    for v, f in files.items():
        f["test_acc"] = round(100.0 * float((top1[v] == labels).mean()), 2)
        f["agreement_with_float"] = round(float((top1[v] == top1["float"]).mean()), 4)
        twin = "prunewise_" + v.removeprefix("ort_")
        if v.startswith("ort_") and twin in top1:  # the two quantizers' files, same settings
            f["agreement_with_prunewise"] = round(float((top1[v] == top1[twin]).mean()), 4)


def latency(files: dict[str, dict], shape: tuple[int, ...], args: argparse.Namespace) -> None:
    """Batch-1 median ms per thread count, all variants timed interleaved, into `files`."""
    for threads in args.thread_list:
        sessions = {v: ort_session(f["path"], threads=threads) for v, f in files.items()}
        lat = time_interleaved(sessions, shape, 1, threads, args)
        for v, f in files.items():
            f.setdefault("latency", {})[f"{threads}t"] = {
                k: lat[v][k] for k in ("median_ms", "p10_ms", "p90_ms", "runs")
            }


def bench(subject: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one model."""
    print(f"\n{subject['name']} ({subject['source']})", flush=True)
    files = build_files(subject, args)
    for f in files.values():
        f["bytes"] = f["path"].stat().st_size
        f["ops"] = dict(collections.Counter(optimized_ops(f["path"])))
    if subject["test"] is not None:
        accuracy(files, subject["test"])
    latency(files, subject["shape"], args)
    for f in files.values():
        f["path"] = str(f["path"])
    model, shape = subject["model"], subject["shape"]
    entry = {"model": subject["name"], "source": subject["source"], "input_shape": list(shape),
             "params": count_params(model), "flops": count_flops(model, shape),
             "calibration_images": len(subject["calib"]), "variants": files}  # fmt: skip
    print_entry(entry, args)
    return entry


def print_entry(entry: dict[str, Any], args: argparse.Namespace) -> None:
    cols = [f"{t}t ms" for t in args.thread_list]
    print(f"  {'variant':22}{'test %':>8}{'agree':>8}" + "".join(f"{c:>10}" for c in cols)
          + f"{'bytes':>11}  executed ops")  # fmt: skip
    for v, f in entry["variants"].items():
        acc = (
            f"{f['test_acc']:8.2f}{f['agreement_with_float']:8.4f}" if "test_acc" in f else " " * 16
        )
        ms = "".join(f"{f['latency'][f'{t}t']['median_ms']:10.3f}" for t in args.thread_list)
        ops = {k: n for k, n in f["ops"].items() if k in KEY_OPS}
        print(f"  {v:22}{acc}{ms}{f['bytes']:11d}  {ops}")


KEY_OPS = ("Conv", "QLinearConv", "Gemm", "QGemm", "MatMul", "QLinearMatMul", "QLinearAdd",
           "QuantizeLinear", "DequantizeLinear", "QLinearGlobalAveragePool")  # fmt: skip


def compare(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model and calibration: ONNX Runtime's INT8 file against prunewise's (test points,
    agreement of the two, latency and bytes ratios; > 1: ORT slower / larger)."""
    out: dict[str, Any] = {}
    for e in entries:
        v = e["variants"]
        for name in [k for k in v if k.startswith("ort_")]:
            ox, pw = v[name], v["prunewise_" + name.removeprefix("ort_")]
            row: dict[str, Any] = {}
            if "test_acc" in ox:
                row["test_points_ort_minus_prunewise"] = round(ox["test_acc"] - pw["test_acc"], 2)
                row["agreement_float_ort_minus_prunewise"] = round(
                    ox["agreement_with_float"] - pw["agreement_with_float"], 4
                )
            for t, lat in pw["latency"].items():
                row[f"latency_ort_over_prunewise_{t}"] = round(
                    ox["latency"][t]["median_ms"] / lat["median_ms"], 3
                )
            row["bytes_ort_over_prunewise"] = round(ox["bytes"] / pw["bytes"], 3)
            out[f"{e['model']}/{name.removeprefix('ort_')}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(2)
    ort.set_default_logger_severity(3)  # the optimized-model dump warns about NCHWc
    commands: list[str] = []
    subjects = fmnist_subjects(args, commands)
    subjects += [imagenet_subject(n, args) for n in args.imagenet.split(",") if n]
    report = {"benchmark": "int8_backends", **header(commands), "machine_details": machine_info(),
              "settings": {k: v for k, v in vars(args).items() if k in
                           ("calibration_images", "threads", "repeats", "max_seconds",
                            "methods", "quick")},
              "models": []}  # fmt: skip
    for subject in subjects:
        report["models"].append(bench(subject, args))
        report["comparison"] = compare(report["models"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\nONNX Runtime's INT8 against prunewise's, same calibration (> 1: ORT slower/larger):")
    for model, row in report["comparison"].items():
        print(f"  {model}: {row}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
