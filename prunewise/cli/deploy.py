"""The deployment sub-commands: deploy, export, bench-latency."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from prunewise.cli.common import (
    add_data_args,
    add_model_args,
    load_model_and_data,
    parse_input_size,
)
from prunewise.cli.index import Command
from prunewise.data import make_loader, sample_images
from prunewise.errors import PrunewiseError
from prunewise.export import (
    DeployConfig,
    LatencyConfig,
    deploy,
    export_float,
    export_int8,
    latency_grid,
    onnx_input_shape,
    parity_problems,
)
from prunewise.io import atomic_write_json, load_checkpoint
from prunewise.quant import Int8Config, quantize
from prunewise.report import deploy_rows, format_table, latency_rows
from prunewise.settings import add_setting
from prunewise.train import TrainConfig

__all__ = ["COMMANDS", "add_int8_args", "add_latency_args", "int8_config", "latency_config"]


INT8_FIELDS = ("calibration", "percentile", "calibration_images", "power_of_two", "weight_bits")
LATENCY_FIELDS = tuple(f.name for f in fields(LatencyConfig))


def add_int8_args(p: argparse.ArgumentParser) -> None:
    """Options of INT8 post-training quantization."""
    g = p.add_argument_group("INT8 quantization")
    for name in INT8_FIELDS:
        add_setting(g, Int8Config, name)


def int8_config(args: argparse.Namespace) -> Int8Config:
    """The Int8Config of the parsed options."""
    return Int8Config(**{name: getattr(args, name) for name in INT8_FIELDS}, seed=args.seed)


def add_latency_args(p: argparse.ArgumentParser) -> None:
    """Options of the ONNX Runtime latency measurement."""
    g = p.add_argument_group("latency (ONNX Runtime, CPU)")
    for name in LATENCY_FIELDS:
        add_setting(g, LatencyConfig, name)


def latency_config(args: argparse.Namespace) -> LatencyConfig:
    """The LatencyConfig of the parsed options."""
    return LatencyConfig(**{name: getattr(args, name) for name in LATENCY_FIELDS})


def _deploy_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    add_int8_args(p)
    add_latency_args(p)
    add_setting(p, DeployConfig, "measure_latency")
    add_setting(p, TrainConfig, "progress")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the ONNX files")


def _deploy_run(args: argparse.Namespace) -> int:
    cfg = DeployConfig(
        int8=int8_config(args),
        latency=latency_config(args),
        measure_latency=args.measure_latency,
    )
    loaded = load_model_and_data(args)
    if args.calibration_images > len(loaded.data.val):
        raise PrunewiseError(
            f"--calibration-images {args.calibration_images} is more than the "
            f"{len(loaded.data.val)} validation images; ask for fewer"
        )
    images = sample_images(loaded.data.val, args.calibration_images, args.seed)
    loader = make_loader(loaded.data.test, 512, shuffle=False)
    record = deploy(loaded.model, images, loader, args.out, cfg, progress=args.progress)
    print(format_table(*deploy_rows(record), title="Deployment (test set)"))
    if record["latency"]:
        print()
        print(format_table(*latency_rows(record), title="ONNX Runtime latency"))
    for problem in parity_problems(record["parity"]):
        print(f"\nwarning: {problem}")
    print(f"\nfiles: {Path(args.out) / 'model.onnx'}, {Path(args.out) / 'model.int8.onnx'}")
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    add_int8_args(p)
    p.add_argument(
        "--int8",
        action="store_true",
        help="write the INT8 QDQ model (calibrated on the data) instead of the float one",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")


def _export_run(args: argparse.Namespace) -> int:
    requested = parse_input_size(args.input_size)
    out = Path(args.out)
    if args.int8:
        loaded = load_model_and_data(args)
        cfg = int8_config(args)
        images = sample_images(loaded.data.val, cfg.calibration_images, args.seed)
        qmodel = quantize(loaded.model.cpu(), images, cfg, progress=True)
        export_int8(qmodel, out)
        atomic_write_json(out.with_suffix(".quant.json"), qmodel.spec.to_dict())
        print(f"wrote {out} (INT8 QDQ) and {out.with_suffix('.quant.json')}")
        return 0
    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        model, shape = ck.model, requested or ck.input_shape
    else:
        if requested is None:
            raise PrunewiseError(
                "the input size of a model built from --model is unknown; pass --input-size "
                "C,H,W (e.g. 3,224,224 for torchvision models) or export a --checkpoint"
            )
        loaded = load_model_and_data(args)
        model, shape = loaded.model, loaded.input_shape
    export_float(model.cpu(), out, shape)
    print(f"wrote {out} (float, input {tuple(shape)})")
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="ONNX", help="ONNX files to time")
    p.add_argument(
        "--input-size",
        default=None,
        metavar="C,H,W",
        help="input shape without batch (default: read from the model when it is fixed)",
    )
    add_latency_args(p)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")


def _shape_of(path: str, requested: tuple[int, ...] | None) -> tuple[int, ...]:
    if requested is not None:
        return requested
    dims = onnx_input_shape(path)[1:]
    if any(d is None for d in dims):
        raise PrunewiseError(f"the input size of {path} is not fixed; pass --input-size C,H,W")
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


def _bench_run(args: argparse.Namespace) -> int:
    cfg = latency_config(args)
    requested = parse_input_size(args.input_size)
    results: dict[str, Any] = {}
    rows = []
    for path in args.models:
        grid = latency_grid(path, _shape_of(path, requested), cfg, progress=True)
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
