"""prunewise's power-of-two INT8 against AMD Quark's power-of-two (XINT8) ONNX quantization.

Vitis AI DPUs and the Ryzen AI NPU take INT8 models whose scales are powers of two. prunewise
makes them with `Int8Config(power_of_two=True)`; AMD's own quantizer, Quark (`amd-quark`),
makes them with its XINT8 configuration. This benchmark quantizes the same float ONNX model,
calibrated on the same images, with both, and measures each INT8 file in ONNX Runtime on the
whole Fashion-MNIST test set: accuracy, top-1 agreement with the float model, file bytes,
whether every QuantizeLinear / DequantizeLinear scale is a power of two, and how the
quantizers are placed (weights stored as int8, bias dtype, activation dtype, ReLU fusion).

Two stages, in two virtual environments (Quark pins onnx<=1.22, prunewise's venv has newer):

- `export` runs in prunewise's venv. Per checkpoint (`--checkpoint NAME=PATH`, repeatable;
  `--run DIR` adds a `prunewise run` folder's baseline and kept model) it loads the model and
  its data as `prunewise deploy --checkpoint PATH` does (prunewise.pipeline.inputs.load_inputs:
  images converted and resized to the checkpoint's input shape; `sample_images` of the
  validation split, seed 0, for calibration; the test split in order) and writes into
  `--work`/NAME: the float ONNX (prunewise.export.export_float), prunewise's power-of-two INT8
  QDQ ONNX (prunewise.quant.quantize with Int8Config(power_of_two=True, calibration_images=N),
  prunewise.export.export_int8), the N calibration images, the test images and labels (.npy),
  and info.json (settings, prunewise's own PyTorch / ONNX Runtime figures as a cross-check).
- `quark` runs in the Quark venv. Per model it quantizes the float ONNX with
  `quark.onnx.ModelQuantizer(config).quantize_model(...)` for two spellings of Quark's XINT8
  preset (`--configs`): "XINT8" is `QConfig.get_default_config("XINT8")`, the call of Quark's
  "Power-of-Two Scales (XINT8) Quantization" tutorial (it returns the legacy
  QuantizationConfig: uint8 activations with zero point 128, CrossLayerEqualization on);
  "XINT8_QCONFIG" is `quark.onnx.XINT8_QCONFIG` (new QConfig API: int8 activations, no CLE).
  Both: power-of-two scales, MinMSE calibration, per-tensor symmetric int8 weights, NPU-CNN
  graph adjustments. Calibration reads the same images prunewise calibrated on, one image per
  batch as Quark's examples do. Then the float, prunewise and Quark files are evaluated in ONNX
  Runtime (CPU, 1 thread, all graph optimisations); the script prints a table and writes
  bench/results/quark_pow2.json (Quark's console output goes to a .log beside each file).

Setup of the Quark venv (once; pins in requirements-quark.txt):

    python3.11 -m venv .venv-quark
    .venv-quark/bin/pip install -r requirements-quark.txt

Run:

    .venv/bin/python bench/quark_pow2.py export --run runs/default \
        --checkpoint resnet20=path/to/resnet20.pt
    .venv-quark/bin/python bench/quark_pow2.py quark

Quark imports torch and compiles its ONNX Runtime custom-op library on first import (about
20 s of one core); the XINT8 models it writes here use only standard QuantizeLinear /
DequantizeLinear, and the script registers the custom-op library only for a model that has
nodes in Quark's domain (and says so). See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import platform
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from _record import cpu_name

DEFAULT_WORK = Path("runs/quark_pow2")
DEFAULT_OUT = Path("bench/results/quark_pow2.json")
FLOAT, PRUNEWISE = "model.onnx", "prunewise_pow2.onnx"
EVAL_BATCH = 500


def version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def name_path(text: str) -> tuple[str, Path]:
    """'baseline=runs/default/baseline/model.pt' -> ('baseline', Path(...))."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


# ---------------------------------------------------------------- stage 1: export (prunewise)


def run_checkpoints(run_dir: Path) -> list[tuple[str, Path]]:
    """A `prunewise run` folder's baseline and kept model.pt (bench/deploy_speed.py's
    kept_checkpoint: summary.json names the kept iteration); the kept one only when it is a
    pruned iteration."""
    from prunewise.io import read_json
    from prunewise.pipeline import RunFolder

    folder = RunFolder(run_dir)
    found = [("baseline", folder.file(0, "model.pt"))]
    kept = int(read_json(folder.summary)["kept"])
    if kept:
        found.append((f"kept_iter{kept}", folder.file(kept, "model.pt")))
    for name, path in found:
        if not path.is_file():
            raise SystemExit(f"--run {run_dir}: no {path} ({name})")
    return found


def export_stage(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    from prunewise.data import make_loader, sample_images
    from prunewise.export import (
        export_float,
        export_int8,
        int8_weight_layers,
        ort_logits,
        ort_session,
    )
    from prunewise.export.deploy import DeployConfig
    from prunewise.io import atomic_write_json
    from prunewise.pipeline.inputs import InputsConfig, load_inputs
    from prunewise.quant import Int8Config, quantize

    work: Path = args.work
    int8 = Int8Config(power_of_two=True, calibration_images=args.calibration_images)
    opset = DeployConfig().opset
    manifest_path = work / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    models = manifest.get("models", {})
    checkpoints = [*(run_checkpoints(args.run) if args.run else []), *(args.checkpoint or [])]
    if not checkpoints:
        raise SystemExit("give --run DIR and/or --checkpoint NAME=PATH")
    for name, path in checkpoints:
        t0 = time.perf_counter()
        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        # What `prunewise deploy --checkpoint PATH` does (prunewise/cli/deploy.py _deploy_run).
        inputs = InputsConfig(checkpoint=str(path), device="cpu", seed=args.seed)
        loaded = load_inputs(inputs)
        model = loaded.model.eval().cpu()
        images = sample_images(loaded.data.val, int8.calibration_images, inputs.seed)
        loader = make_loader(loaded.data.test, 512, shuffle=False)
        qmodel = quantize(model, images.cpu(), int8)
        shape = qmodel.input_shape
        float_path = export_float(model, out / FLOAT, shape, opset=opset)
        int8_path = export_int8(qmodel, out / PRUNEWISE, opset=opset)
        atomic_write_json(out / "prunewise_pow2.quant.json", qmodel.spec.to_dict())
        xs, ys, tf, tq = [], [], [], []
        with torch.no_grad():
            for x, y in loader:
                xs.append(x.float().numpy())
                ys.append(np.asarray(y))
                tf.append(model(x.float()).numpy())
                tq.append(qmodel.model(x.float()).numpy())
        test_x = np.ascontiguousarray(np.concatenate(xs), dtype=np.float32)
        test_y = np.concatenate(ys).astype(np.int64)
        calib = np.ascontiguousarray(images.numpy(), dtype=np.float32)
        np.save(out / "calib.npy", calib)
        np.save(out / "test_images.npy", test_x)
        np.save(out / "test_labels.npy", test_y)
        tf_, tq_ = np.concatenate(tf), np.concatenate(tq)
        of = ort_logits(ort_session(float_path, threads=1), test_x, batch_size=EVAL_BATCH)
        oq = ort_logits(ort_session(int8_path, threads=1), test_x, batch_size=EVAL_BATCH)
        import onnx

        def acc(logits: np.ndarray, labels: np.ndarray = test_y) -> float:
            return float((logits.argmax(1) == labels).mean() * 100)

        info = {
            "name": name,
            "checkpoint": str(path),
            "checkpoint_meta": {
                k: loaded.meta.get(k) for k in ("model", "width", "dataset", "test_acc")
            },
            "input_shape": list(shape),
            "calibration": {
                "images": int(calib.shape[0]),
                "source": "validation split, prunewise.data.sample_images(val, N, seed) as "
                "`prunewise deploy` draws them",
                "seed": inputs.seed,
            },
            "test_images": int(test_x.shape[0]),
            "prunewise_int8_config": dataclasses.asdict(int8),
            "opset": opset,
            "int8_weight_layers": int8_weight_layers(onnx.load(str(int8_path))),
            "export_venv": {
                "python": sys.executable,
                "torch": torch.__version__,
                "onnx": version("onnx"),
                "onnxruntime": version("onnxruntime"),
            },
            "export_venv_accuracy": {
                "pytorch_float": acc(tf_),
                "pytorch_fake_quant_pow2": acc(tq_),
                "ort_float": acc(of),
                "ort_prunewise_pow2": acc(oq),
                "ort_prunewise_pow2_vs_fake_quant_top1": float(
                    (oq.argmax(1) == tq_.argmax(1)).mean()
                ),
            },
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_json(out / "info.json", info)
        models[name] = str(out)
        print(
            f"{name}: {path} -> {out} (float {acc(of):.2f} %, prunewise pow2 {acc(oq):.2f} % "
            f"in ONNX Runtime {version('onnxruntime')}, {info['seconds']} s)",
            flush=True,
        )
    manifest["models"] = models
    manifest.setdefault("export_commands", []).append(" ".join([sys.executable, *sys.argv]))
    write_json(manifest_path, manifest)
    return 0


# ---------------------------------------------------------------- stage 2: quark + evaluation


def is_pow2(value: float) -> bool:
    """Whether `value` is 2^k for an integer k (exactly, in float32)."""
    if not (value > 0 and math.isfinite(value)):
        return False
    mantissa, _ = math.frexp(float(np.float32(value)))
    return mantissa == 0.5


def graph_facts(path: Path) -> dict[str, Any]:
    """What the QDQ graph holds: op counts, scales (all powers of two?), zero points, how Conv /
    Gemm weights and biases are stored, and where the ReLUs sit."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    # prunewise.export.onnx_export._constants, copied: this stage runs without prunewise
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    producer = {o: n for n in graph.node for o in n.output}
    ops = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}" for n in graph.node
    )
    scales, zero_points, not_pow2 = [], collections.Counter(), []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = values.get(node.input[1])
        if scale is None:
            not_pow2.append(f"{node.name}: scale {node.input[1]} is not a constant")
            continue
        for s in np.asarray(scale, dtype=np.float64).ravel():
            scales.append(float(s))
            if not is_pow2(float(s)):
                not_pow2.append(f"{node.name}: {float(s)!r}")
        if len(node.input) > 2 and node.input[2] in values:
            zp = values[node.input[2]]
            for v in sorted({int(z) for z in np.asarray(zp).ravel()}):
                zero_points[f"{node.op_type} {zp.dtype} {v}"] += 1
    exps = [round(math.log2(s)) for s in scales if s > 0]
    graph_inputs = {i.name for i in graph.input}
    input_scales = sorted(
        {
            float(np.asarray(values[n.input[1]]).ravel()[0])
            for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] in graph_inputs and n.input[1] in values
        }
    )

    def source(tensor: str) -> str:
        """How a Conv/Gemm input is stored: 'int8 initializer -> DQ', 'float -> Q -> DQ', ..."""
        if tensor in values and tensor not in producer:
            return f"{values[tensor].dtype} initializer (not quantized)"
        node = producer.get(tensor)
        if node is None:
            return "graph input"
        if node.op_type == "DequantizeLinear":
            inner = node.input[0]
            if inner in values and inner not in producer:
                per = "per-channel" if np.asarray(values[node.input[1]]).size > 1 else "per-tensor"
                return f"{values[inner].dtype} initializer -> DQ ({per})"
            q = producer.get(inner)
            if q is not None and q.op_type == "QuantizeLinear":
                if q.input[0] in values and q.input[0] not in producer:
                    return f"{values[q.input[0]].dtype} initializer -> Q -> DQ"
                return "activation -> Q -> DQ"
            return f"{producer[inner].op_type if inner in producer else '?'} -> DQ"
        return f"{node.op_type} output"

    weights, biases, inputs = (collections.Counter() for _ in range(3))
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            inputs[source(node.input[0])] += 1
            weights[source(node.input[1])] += 1
            biases[source(node.input[2]) if len(node.input) > 2 and node.input[2] else "none"] += 1
    relu_after = collections.Counter()
    for node in graph.node:
        if node.op_type == "Relu":
            p = producer.get(node.input[0])
            relu_after[p.op_type if p is not None else "graph input"] += 1
    int8_weights = sum(v for k, v in weights.items() if k.startswith("int8 initializer -> DQ"))
    return {
        "bytes": path.stat().st_size,
        "ops": dict(sorted(ops.items())),
        "conv_gemm_layers": sum(ops[k] for k in ("Conv", "Gemm")),
        "int8_weight_layers": int8_weights,
        "weights": dict(weights),
        "biases": dict(biases),
        "conv_gemm_inputs": dict(inputs),
        "relu_input_from": dict(relu_after),
        "scales": len(scales),
        "all_scales_pow2": bool(scales) and not not_pow2,
        "not_pow2": not_pow2[:10],
        "scale_exponent_range": [min(exps), max(exps)] if exps else None,
        "zero_points": dict(sorted(zero_points.items())),
        "input_scale": input_scales,
        "custom_domain_nodes": sum(v for k, v in ops.items() if ":" in k),
    }


def ort_open(path: Path, custom_ops: str | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if custom_ops:
        opts.register_custom_ops_library(custom_ops)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def logits_of(session, images: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    out = session.get_outputs()[0].name
    return np.concatenate(
        [
            session.run([out], {name: images[i : i + EVAL_BATCH]})[0]
            for i in range(0, len(images), EVAL_BATCH)
        ]
    )


QUARK_CONFIGS = {
    "XINT8": 'QConfig.get_default_config("XINT8") (the XINT8 tutorial\'s call: legacy '
    "QuantizationConfig XINT8_CONFIG behind the Config wrapper ModelQuantizer calls deprecated)",
    "XINT8_QCONFIG": "quark.onnx.XINT8_QCONFIG (the same preset in the new QConfig API: "
    "QLayerConfig(activation=XInt8Spec(), weight=XInt8Spec()))",
}
"""Quark's power-of-two presets this script runs (--configs)."""


def quark_config(name: str) -> tuple[Any, dict[str, Any]]:
    """The Quark config object of `name` and what it sets (JSON-ready)."""
    import copy
    import dataclasses

    from quark.onnx import XINT8_QCONFIG
    from quark.onnx.quantization.config import QConfig

    if name == "XINT8":
        # get_default_config wraps the module-level preset itself, and quantize_model adds
        # options to it: copy it, so that every model starts from the preset as shipped.
        config = copy.deepcopy(QConfig.get_default_config("XINT8"))
        g = config.global_quant_config
        fields = {f.name: getattr(g, f.name) for f in dataclasses.fields(g)}
        used = {
            k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in fields.items()
        }
        used["extra_options"] = {k: repr(v) for k, v in g.extra_options.items()}
    else:
        config = copy.deepcopy(XINT8_QCONFIG)
        used = json.loads(json.dumps(config.to_dict(), default=str))
    return config, {"name": name, "api": QUARK_CONFIGS[name], "settings": used}


def quark_quantize(config_name: str, float_path: Path, out_path: Path, calib: np.ndarray):
    """Quark's `config_name` on `float_path`, calibrated on `calib` (one image per batch);
    Quark's console output goes to out_path.log. Returns the notable log lines and seconds."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from quark.onnx import ModelQuantizer

    input_name = onnx.load(str(float_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = None

        def get_next(self):
            if self.items is None:
                self.items = iter([{input_name: calib[i : i + 1]} for i in range(len(calib))])
            return next(self.items, None)

        def rewind(self) -> None:
            self.items = None

    config, _ = quark_config(config_name)
    float_path, out_path = float_path.resolve(), out_path.resolve()
    log = out_path.with_suffix(".log")
    # Quark appends a per-node summary to ./quantized_info.csv: run it in the model's folder
    # and keep the summary beside the model it describes.
    summary = out_path.parent / "quantized_info.csv"
    summary.unlink(missing_ok=True)
    cwd = Path.cwd()
    t0 = time.perf_counter()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        os.chdir(out_path.parent)
        try:
            ModelQuantizer(config).quantize_model(str(float_path), str(out_path), Reader())
        finally:
            os.chdir(cwd)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    if summary.is_file():
        os.replace(summary, out_path.with_suffix(".quantized_info.csv"))
    seconds = round(time.perf_counter() - t0, 1)
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())
    notable = [
        ln.strip()
        for ln in text.splitlines()
        if ln.startswith("[QUARK-")
        and re.search(
            r"CrossLayerEqualization|CLE|Remove QuantizeLinear|Rescale|Adjust|WARNING", ln
        )
    ]
    return list(dict.fromkeys(notable)), seconds


def rel_l2(approx: np.ndarray, exact: np.ndarray) -> float:
    norm = float(np.linalg.norm(exact))
    return float(np.linalg.norm(approx.astype(np.float64) - exact)) / norm if norm else 0.0


def quark_stage(args: argparse.Namespace) -> int:
    import onnx
    import onnxruntime
    import quark
    from quark.onnx import get_library_path

    work: Path = args.work
    manifest = json.loads((work / "manifest.json").read_text())
    names = args.models or list(manifest["models"])
    results: dict[str, Any] = {}
    settings = [quark_config(c)[1] for c in args.configs]  # before quantize_model runs
    for name in names:
        folder = Path(manifest["models"][name])
        info = json.loads((folder / "info.json").read_text())
        calib = np.load(folder / "calib.npy")
        test_x, test_y = np.load(folder / "test_images.npy"), np.load(folder / "test_labels.npy")
        files = {"float": folder / FLOAT, "prunewise_pow2": folder / PRUNEWISE}
        quark_runs = {}
        for config in args.configs:
            key = f"quark_{config}"
            files[key] = folder / f"{key}.onnx"
            notable, seconds = quark_quantize(config, files["float"], files[key], calib)
            quark_runs[key] = {
                "seconds": seconds,
                "log": str(files[key].with_suffix(".log")),
                "notable_log_lines": notable,
            }
            print(f"{name}: Quark {config} took {seconds} s", flush=True)
        logits: dict[str, np.ndarray] = {}
        row: dict[str, Any] = {"checkpoint": info["checkpoint"], "export": info}
        for key, path in files.items():
            facts = graph_facts(path)
            lib = get_library_path("CPU") if facts["custom_domain_nodes"] else None
            logits[key] = logits_of(ort_open(path, lib), test_x)
            pred, ref = logits[key].argmax(1), logits["float"].argmax(1)
            row[key] = {
                "file": str(path),
                "accuracy": float((pred == test_y).mean() * 100),
                "top1_agreement_with_float": float((pred == ref).mean()),
                "rel_l2_logits_vs_float": rel_l2(logits[key], logits["float"]),
                "needs_quark_custom_ops": lib is not None,
                **facts,
                **quark_runs.get(key, {}),
            }
        row["top1_agreement_prunewise_vs"] = {
            key: float((logits["prunewise_pow2"].argmax(1) == logits[key].argmax(1)).mean())
            for key in quark_runs
        }
        results[name] = row
    print_table(results)
    record = {
        "command": " ".join([sys.executable, *sys.argv]),
        "export_commands": manifest.get("export_commands", []),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "python": platform.python_version()},
        "versions": {
            "amd-quark": getattr(quark, "__version__", version("amd-quark")),
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            "torch (quark venv)": version("torch"),
        },
        "settings": {
            "quark": settings,
            "quark_calibration": "the N images of calib.npy (the ones prunewise calibrated "
            "on), one image per CalibrationDataReader batch",
            "prunewise": "Int8Config(power_of_two=True, calibration_images=N); other fields "
            "default (each model's export.prunewise_int8_config)",
            "evaluation": "ONNX Runtime CPUExecutionProvider, 1 intra-op thread, sequential, "
            f"ORT_ENABLE_ALL, batches of {EVAL_BATCH}; the whole test split; agreement is "
            "top-1 against the float ONNX model in the same session settings",
        },
        "models": results,
    }
    write_json(args.out, record)
    print(f"\nwrote {args.out}")
    return 0


def print_table(results: dict[str, Any]) -> None:
    head = ["model", "variant", "accuracy %", "agree w/ float", "bytes", "all pow2", "int8 W"]
    rows = []
    for name, row in results.items():
        for key in [k for k, v in row.items() if isinstance(v, dict) and "accuracy" in v]:
            r = row[key]
            pow2 = "-" if key == "float" else ("yes" if r["all_scales_pow2"] else "NO")
            int8w = "-" if key == "float" else f"{r['int8_weight_layers']}/{r['conv_gemm_layers']}"
            rows.append(
                [
                    name,
                    key,
                    f"{r['accuracy']:.2f}",
                    f"{100 * r['top1_agreement_with_float']:.2f} %",
                    str(r["bytes"]),
                    pow2,
                    int8w,
                ]
            )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    for line in [head, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    for name, row in results.items():
        for key, agree in row["top1_agreement_prunewise_vs"].items():
            print(f"{name}: prunewise_pow2 vs {key} top-1 agreement {100 * agree:.2f} %")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)
    e = sub.add_parser("export", help="float + prunewise pow2 ONNX and data (prunewise's venv)")
    e.add_argument(
        "--checkpoint",
        type=name_path,
        action="append",
        metavar="NAME=PATH",
        help="a prunewise checkpoint (repeatable)",
    )
    e.add_argument(
        "--run",
        type=Path,
        default=None,
        metavar="DIR",
        help="a `prunewise run` folder: its baseline and kept checkpoints (names baseline, "
        "kept_iterN)",
    )
    e.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder")
    e.add_argument("--calibration-images", type=int, default=256, metavar="N")
    e.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    q = sub.add_parser("quark", help="Quark XINT8 and the evaluation (the Quark venv)")
    q.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder")
    q.add_argument("--models", nargs="*", default=None, help="names (default: all exported)")
    q.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    q.add_argument(
        "--configs",
        nargs="+",
        default=list(QUARK_CONFIGS),
        choices=QUARK_CONFIGS,
        help="Quark presets to run (default: both)",
    )
    args = p.parse_args(argv)
    return export_stage(args) if args.stage == "export" else quark_stage(args)


if __name__ == "__main__":
    sys.exit(main())
