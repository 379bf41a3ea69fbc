"""The deployment sub-commands: deploy, export, bench-latency."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from prunewise.cli.common import add_inputs_args, load
from prunewise.cli.index import Command
from prunewise.export import (
    MIOU,
    TOP1,
    DeployConfig,
    LatencyConfig,
    deploy,
    export_model,
    latency_grid,
    parity_problems,
)
from prunewise.io import atomic_write_json, check_writable, load_checkpoint
from prunewise.pipeline.inputs import InputsConfig, bare_model
from prunewise.quant import Int8Config
from prunewise.report import deploy_rows, format_table, latency_rows
from prunewise.settings import add_setting, add_settings, settings_from_args
from prunewise.train import TrainConfig

__all__ = ["COMMANDS"]

INT8_FIELDS = ("calibration", "percentile", "calibration_images", "power_of_two", "weight_bits")
INT8_FIELDS += ("backend",)
LATENCY_FIELDS = tuple(f.name for f in fields(LatencyConfig))


def _deploy_args(p: argparse.ArgumentParser) -> None:
    add_inputs_args(p, task=True)
    add_settings(p, Int8Config, INT8_FIELDS, title="INT8 quantization")
    add_settings(p, LatencyConfig, LATENCY_FIELDS, title="latency (ONNX Runtime, CPU)")
    add_settings(p, DeployConfig, ("measure_latency", "opset"))
    add_setting(p, TrainConfig, "progress")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the ONNX files")


def _deploy_run(args: argparse.Namespace) -> int:
    int8, latency = (settings_from_args(c, args) for c in (Int8Config, LatencyConfig))
    cfg = settings_from_args(DeployConfig, args, int8=int8, latency=latency)
    _, loaded = load(args)
    images = loaded.calibration_images(int8.calibration_images, args.seed)
    kw = {"progress": args.progress, "metric": loaded.metric, "labels": loaded.data.class_names}
    record = deploy(loaded.model, images, loaded.loader(loaded.data.test), args.out, cfg, **kw)
    print(format_table(*deploy_rows(record), title="Deployment (test set)"))
    if record.latency:
        print("\n" + format_table(*latency_rows(record), title="ONNX Runtime latency"))
    out = Path(args.out)
    print(f"\nfiles: {out / 'model.onnx'}, {out / 'model.int8.onnx'} (by {int8.backend})")
    sys.stderr.write("".join(f"warning: {p}\n" for p in parity_problems(record.parity)))
    return 0 if record.parity.float_ok and record.parity.int8_ok else 1  # ORT computes otherwise


def _export_args(p: argparse.ArgumentParser) -> None:
    add_inputs_args(p, task=True)
    add_settings(p, Int8Config, INT8_FIELDS, title="INT8 quantization")
    add_setting(p, DeployConfig, "opset")
    p.add_argument("--int8", action="store_true", help="write the INT8 QDQ model (calibrated)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")


def _export_run(args: argparse.Namespace) -> int:
    int8, images, names = settings_from_args(Int8Config, args) if args.int8 else None, None, None
    if args.checkpoint and not args.int8:  # no data needed
        ck = load_checkpoint(args.checkpoint)
        model, shape = ck.model, args.input_size or ck.input_shape
        names = ck.meta.get("class_names") if ck.meta.get("metric") != MIOU else None
    elif not args.int8 and args.dataset is None:  # no data: the builder's own classes
        model, shape = bare_model(settings_from_args(InputsConfig, args))
    else:  # the data give the calibration images; their classes do not size the model
        _, loaded = load(args, scored=False)
        model, shape = loaded.model, loaded.input_shape
        names = loaded.data.class_names if loaded.metric == TOP1 else None
        if int8 is not None:
            images = loaded.calibration_images(int8.calibration_images, args.seed)
    kw = {"int8": int8, "calibration": images, "labels": names, "opset": args.opset}
    print(export_model(model, args.out, shape, **kw))
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="ONNX", help="ONNX files to time")
    size = add_setting(p, InputsConfig, "input_size")
    size.help = "model input shape (unset: the ONNX file's, when it is fixed)"
    add_settings(p, LatencyConfig, LATENCY_FIELDS, title="latency (ONNX Runtime, CPU)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")


def _bench_run(args: argparse.Namespace) -> int:
    cfg = settings_from_args(LatencyConfig, args)
    check_writable(args.json, files=True)  # before the timing
    results, rows = {}, []  # per file its grid; the table's rows
    for path in args.models:
        grid = latency_grid(path, args.input_size, cfg, progress=True)
        results[path] = [lat.to_dict() for lat in grid]
        rows += [[path, lat.threads, lat.batch, lat.median_ms, lat.fps] for lat in grid]
    print(format_table(["model", "threads", "batch", "median ms", "images/s"], rows))
    if args.json:
        atomic_write_json(args.json, {"latency": results, "config": cfg.__dict__})
    return 0


COMMANDS: dict[str, Command] = {
    "deploy": (_deploy_args, _deploy_run),
    "export": (_export_args, _export_run),
    "bench-latency": (_bench_args, _bench_run),
}
