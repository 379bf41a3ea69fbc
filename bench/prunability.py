"""What prunewise and Torch-Pruning 1.6.1 can prune, model by model, in one run.

Every torchvision classification model, the torchvision segmentation models (21 classes, no
auxiliary head) and a fixed list of timm CNNs across families; random weights (nothing is
downloaded), eval mode, one example at the model's own input size (timm's pretrained_cfg;
299 px for torchvision's Inception v3, 224 px otherwise). Per model:

- prunewise: build_channel_graph + uniform_plan(ratio 0.4, prune_tied=True, importance l2) +
  apply_plan (timed). Exactness: the pruned model against the original with the removed channels
  zeroed at their producers (zeroed_copy), float64, relative to the output's largest magnitude;
  groups that a norm over channels mixes (ChannelGroup.mixed, e.g. ConvNeXt's LayerNorm) are
  left out of that plan and counted. The pruned model is saved with save_checkpoint and loaded
  back with load_checkpoint in a fresh Python process, whose output must match.
- Torch-Pruning: tp.pruner.MetaPruner (= BasePruner) with MagnitudeImportance(p=2), pruning_ratio
  0.4, every Linear/Conv whose output is the class count ignored (timed: constructor + step()).
  "ok" when its pruned model still runs and gives the original output shape.
- FLOPs (multiply-accumulates) and params of both tools' models by prunewise's counter, and of
  the original and prunewise's pruned model by fvcore (relative difference).

Each model runs in its own process (one torch thread; `--jobs` of them at once, the largest
models alone); finished models are kept in a .jsonl beside the output, so an interrupted run
continues where it stopped. Run: `make bench-deps` then `.venv/bin/python bench/prunability.py`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import header

RATIO = 0.4
TIMM_MODELS = (  # noqa: SIM905
    "mobilenetv2_100 mobilenetv3_large_100 mobilenetv3_small_050 tf_mobilenetv3_small_100 "
    "mobilenetv4_conv_small lcnet_050 efficientnet_b0 tf_efficientnet_b0 efficientnetv2_rw_t "
    "tinynet_a mixnet_s mnasnet_100 semnasnet_100 spnasnet_100 fbnetc_100 hardcorenas_a "
    "ghostnet_100 ghostnetv2_100 repghostnet_050 rexnet_100 regnetx_002 regnety_002 "
    "regnetz_b16 repvgg_a0 mobileone_s0 resnet18 resnet50 resnet26d seresnet18 ecaresnet26t "
    "skresnet18 resnext26ts resnext50_32x4d res2net50_26w_4s resnest14d bat_resnext26ts "
    "cspresnet50 cspresnext50 cspdarknet53 darknet53 cs3darknet_s vovnet39a ese_vovnet19b_dw "
    "densenet121 dla34 dpn68 hrnet_w18_small selecsls42b xception41 inception_v4 "
    "inception_v3 nasnetalarge nf_resnet26 nf_regnet_b0 dm_nfnet_f0 convnext_atto "
    "convnext_pico gernet_s hgnetv2_b0 vgg11_bn tresnet_m legacy_seresnet18"
).split()
HEAVY = {
    "tv:maxvit_t",
    "tv:regnet_y_128gf",
    "tv:vit_h_14",
    "tv:vit_l_16",
    "tv:vit_l_32",
    "tv:regnet_y_32gf",
}
EXACT_TOL = 1e-5
LOADER = (
    "import sys, torch\n"
    "from prunewise.io import load_checkpoint\n"
    "ck = load_checkpoint(sys.argv[1])\n"
    "ref = torch.load(sys.argv[2], weights_only=True)\n"
    "with torch.no_grad():\n"
    "    y = ck.model.eval()(ref['x'])\n"
    "y = y['out'] if isinstance(y, dict) else y\n"
    "err = float((y - ref['y']).abs().max() / ref['y'].abs().max().clamp_min(1e-12))\n"
    "print(err)\n"
)


def build(key: str) -> tuple[Any, tuple[int, int, int], int]:
    """The model for `source:name`, its input shape (C, H, W) and its class count."""
    import torch
    import torchvision

    source, name = key.split(":", 1)
    torch.manual_seed(0)
    if source == "tv":
        model = torchvision.models.get_model(name, weights=None)
        shape, classes = ((3, 299, 299) if name == "inception_v3" else (3, 224, 224)), 1000
    elif source == "seg":
        model = torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=21, aux_loss=False
        )
        shape, classes = (3, 224, 224), 21
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        shape = tuple(timm.data.resolve_data_config({}, model=model)["input_size"])
        classes = model.num_classes
    return model.eval(), shape, classes


def logits(y: Any) -> Any:
    """The main output of a classification or segmentation model."""
    return y["out"] if isinstance(y, dict) else y


def first_line(exc: BaseException) -> str:
    """`Type: first line` of an exception, at most 300 characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def fvcore_counts(model: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    """fvcore's FLOPs (one image) and parameter count."""
    import torch
    from fvcore.nn import FlopCountAnalysis, parameter_count

    logging.disable(logging.WARNING)
    try:
        fca = FlopCountAnalysis(model.eval(), torch.zeros(1, *shape))
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        return int(fca.total()), int(parameter_count(model)[""])
    finally:
        logging.disable(logging.NOTSET)


def rel(ours: int, theirs: int) -> float:
    """ours / theirs - 1 (0 when both are 0)."""
    return 0.0 if ours == theirs else (ours / theirs - 1 if theirs else float("inf"))


def run_prunewise(key: str, workdir: Path) -> dict[str, Any]:
    """prunewise's side of one model (see the module docstring)."""
    import torch

    from prunewise.analysis import count_flops, count_params, prunability
    from prunewise.graph import build_channel_graph
    from prunewise.io import save_checkpoint
    from prunewise.prune import PruningPlan, apply_plan, uniform_plan
    from prunewise.prune.surgery import zeroed_copy

    model, shape, classes = build(key)
    rec: dict[str, Any] = {"input_shape": list(shape), "classes": classes}
    rec["flops"], rec["params"] = count_flops(model, shape), count_params(model)
    fv_flops, fv_params = fvcore_counts(model, shape)
    rec["fvcore_rel"] = {
        "flops": rel(rec["flops"], fv_flops),
        "params": rel(rec["params"], fv_params),
    }
    pw: dict[str, Any] = {}
    rec["prunewise"] = pw
    try:
        start = time.perf_counter()
        graph = build_channel_graph(model, shape)
        plan = uniform_plan(graph, RATIO, prune_tied=True, importance="l2")
        pruned = apply_plan(graph, plan).eval()
        pw["seconds"] = round(time.perf_counter() - start, 3)
    except Exception as exc:  # a refusal is a result here
        pw["status"] = "error"
        pw["error"] = first_line(exc)
        return rec
    default = prunability(graph)
    tied = prunability(graph, prune_tied=True, importance="l2")
    pw["prunable_flops_share"] = {"default": default.flops_share, "tied_l2": tied.flops_share}
    pw["default_warns"] = default.warning() is not None
    pw["flops"], pw["params"] = count_flops(pruned, shape), count_params(pruned)
    pw["flops_removed"] = 1 - pw["flops"] / rec["flops"]
    pw["params_removed"] = 1 - pw["params"] / rec["params"]
    fv_flops, fv_params = fvcore_counts(pruned, shape)
    pw["fvcore_rel"] = {"flops": rel(pw["flops"], fv_flops), "params": rel(pw["params"], fv_params)}
    mixed = {d.group for d in plan.decisions if d.removed and graph.group(d.group).mixed}
    pw["mixed_groups"] = len(mixed)
    exact_plan = PruningPlan(
        tuple(d for d in plan.decisions if d.group not in mixed), plan.input_shape, plan.policy
    )
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = logits(zeroed_copy(graph, exact_plan).double()(x.double()))
        cut = pruned if not mixed else apply_plan(graph, exact_plan).eval()
        got = logits(cut.double()(x.double()))
        pw["exact_error"] = float(
            (got - reference).abs().max() / reference.abs().max().clamp_min(1e-12)
        )
        del reference, cut, got
        pruned.float()
        y = logits(pruned(x))
    pw["status"] = "exact" if pw["exact_error"] <= EXACT_TOL else "inexact"
    ckpt, ref = workdir / "model.pt", workdir / "ref.pt"
    try:
        save_checkpoint(ckpt, pruned, input_shape=shape)
        torch.save({"x": x, "y": y}, ref)
        pw["checkpoint_bytes"] = ckpt.stat().st_size
        done = subprocess.run(
            [sys.executable, "-c", LOADER, str(ckpt), str(ref)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        ok = done.returncode == 0 and float(done.stdout.split()[-1]) <= EXACT_TOL
        pw["checkpoint_reload"] = "ok" if ok else (done.stdout + done.stderr).strip()[-300:]
    except Exception as exc:
        pw["checkpoint_reload"] = first_line(exc)
    return rec


def run_torch_pruning(key: str) -> dict[str, Any]:
    """Torch-Pruning's side of one model (see the module docstring)."""
    import torch
    import torch_pruning as tp
    from torch import nn

    from prunewise.analysis import count_flops, count_params

    model, shape, classes = build(key)
    x = torch.randn(1, *shape)
    with torch.no_grad():
        want = tuple(logits(model(x)).shape)
    try:  # prunewise's counter; fvcore where prunewise cannot trace the model
        flops0 = count_flops(model, shape)
    except Exception:
        flops0 = fvcore_counts(model, shape)[0]
    params0 = count_params(model)
    ignored = [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == classes)
        or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == classes)
    ]
    out: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=RATIO,
            ignored_layers=ignored,
        )
        pruner.step()
        out["seconds"] = round(time.perf_counter() - start, 3)
    except Exception as exc:
        return {"status": "error", "error": first_line(exc)}
    try:
        with torch.no_grad():
            got = tuple(logits(model.eval()(x)).shape)
    except Exception as exc:
        return {**out, "status": "broken", "error": first_line(exc)}
    if got != want:
        return {**out, "status": "broken", "error": f"output shape {got}, expected {want}"}
    out["status"] = "ok"
    try:
        flops = count_flops(model, shape)
    except Exception:
        flops = fvcore_counts(model, shape)[0]
        out["flops_counter"] = "fvcore"
    out["flops_removed"] = 1 - flops / flops0
    out["params"] = count_params(model)
    out["params_removed"] = 1 - out["params"] / params0
    return out


def one(key: str) -> dict[str, Any]:
    """Both tools on one model, each in a clean state."""
    import gc

    import torch

    torch.set_num_threads(1)
    rec: dict[str, Any] = {"model": key}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rec.update(run_prunewise(key, Path(tmp)))
        except Exception as exc:
            rec["prunewise"] = {"status": "error", "error": first_line(exc)}
    print(json.dumps(rec), flush=True)  # prunewise's part survives a crash of the rest
    gc.collect()
    try:
        rec["torch_pruning"] = run_torch_pruning(key)
    except Exception as exc:
        rec["torch_pruning"] = {"status": "error", "error": first_line(exc)}
    return rec


def models(sources: list[str]) -> list[str]:
    """`source:name` keys of the chosen sources, heavy torchvision models last."""
    import torchvision

    keys: list[str] = []
    if "tv" in sources:
        keys += [f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    if "seg" in sources:
        keys += [
            f"seg:{n}"
            for n in torchvision.models.list_models(module=torchvision.models.segmentation)
        ]
    if "timm" in sources:
        keys += [f"timm:{n}" for n in TIMM_MODELS]
    return [k for k in keys if k not in HEAVY] + [k for k in keys if k in HEAVY]


def spawn(key: str, timeout: int) -> dict[str, Any]:
    """Run `one(key)` in a fresh process; a crash or a timeout is recorded, not raised (and
    charged to Torch-Pruning when prunewise's part had finished)."""
    cmd = [sys.executable, __file__, "--one", key]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        stdout, failure = done.stdout, None
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if "Error" in ln][-1:]
            killed = " (killed: out of memory?)" if done.returncode == -9 else ""
            failure = f"crashed, exit {done.returncode}{killed}: {''.join(errors)}"[:300]
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        stdout = out.decode() if isinstance(out, bytes) else out
        failure = f"timeout after {timeout} s"
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    rec = json.loads(lines[-1]) if lines else {"model": key}
    if "prunewise" not in rec:
        rec["prunewise"] = {"status": "error", "error": failure or "no result"}
    elif failure is not None and "torch_pruning" not in rec:
        rec["torch_pruning"] = {"status": "error", "error": failure}
    rec["wall_seconds"] = round(time.perf_counter() - start, 1)
    return rec


def line(rec: dict[str, Any]) -> str:
    """One printed row."""
    pw, tpr = rec.get("prunewise", {}), rec.get("torch_pruning", {})

    def removed(d: dict[str, Any]) -> str:
        if "flops_removed" not in d:
            return "-"
        return f"{d['flops_removed']:.1%} ({d['params_removed']:.0%} p)"

    return (
        f"{rec['model']:<38} prunewise {pw.get('status', '?'):<8}{removed(pw):>15}  "
        f"TP {tpr.get('status', '?'):<7}{removed(tpr):>15}  "
        f"{pw.get('error') or tpr.get('error') or ''}"[:200]
    )


def _normalise(rec: dict[str, Any]) -> dict[str, Any]:
    """Fields of records written by an earlier version of this script, in today's form."""
    for tool in ("prunewise", "torch_pruning"):
        d = rec.get(tool, {})
        d.pop("channels_removed", None)  # counted nn modules only: missed inlined layers
        if "params" in d and "params_removed" not in d and rec.get("params"):
            d["params_removed"] = 1 - d["params"] / rec["params"]
    return rec


def summarise(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per source: models, prunewise exact, TP ok, TP ok where prunewise is not."""
    out: dict[str, Any] = {}
    for source in sorted({r["model"].split(":")[0] for r in recs}):
        rs = [r for r in recs if r["model"].startswith(source + ":")]
        pw_ok = [r for r in rs if r["prunewise"].get("status") == "exact"]
        tp_ok = [r for r in rs if r.get("torch_pruning", {}).get("status") == "ok"]
        fv_off = [
            r["model"]
            for r in rs
            for d in (r, r["prunewise"])
            if any(abs(v) > 0.01 for v in d.get("fvcore_rel", {}).values())
        ]
        out[source] = {
            "models": len(rs),
            "prunewise_exact": len(pw_ok),
            "torch_pruning_ok": len(tp_ok),
            "checkpoint_reload_ok": sum(
                r["prunewise"].get("checkpoint_reload") == "ok" for r in rs
            ),
            "torch_pruning_ok_prunewise_not": sorted(
                {r["model"] for r in tp_ok} - {r["model"] for r in pw_ok}
            ),
            "fvcore_over_1pct": sorted(set(fv_off)),
        }
    return out


def table(result: dict[str, Any]) -> str:
    """The results as a markdown table (bench/README.md)."""

    def pct(d: dict[str, Any], key: str) -> str:
        return f"{d[key]:.1%}" if key in d else "-"

    def status(d: dict[str, Any]) -> str:
        text = d.get("status", "?")
        if d.get("mixed_groups"):
            text += f" ({d['mixed_groups']} mixed)"
        if "checkpoint_reload" in d and d["checkpoint_reload"] != "ok":
            text += ", reload fails"
        return text

    rows = [
        "| model | prunewise | FLOPs removed | params removed | s | Torch-Pruning | FLOPs "
        "removed | params removed | s | fvcore (ours / fvcore - 1) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in result["models"]:
        pw, tpr = r["prunewise"], r.get("torch_pruning", {})
        fv = [*r.get("fvcore_rel", {}).values(), *pw.get("fvcore_rel", {}).values()]
        worst = max((abs(v) for v in fv), default=None)
        rows.append(
            f"| {r['model']} | {status(pw)} | {pct(pw, 'flops_removed')} | "
            f"{pct(pw, 'params_removed')} | {pw.get('seconds', '-')} | {status(tpr)} | "
            f"{pct(tpr, 'flops_removed')} | {pct(tpr, 'params_removed')} | "
            f"{tpr.get('seconds', '-')} | {'-' if worst is None else f'{worst:.2%}'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --one, one model in this process)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", default="tv,seg,timm", help="comma list of tv, seg, timm")
    p.add_argument("--models", default="", help="comma list of source:name (overrides --sources)")
    p.add_argument("--jobs", type=int, default=2, help="models at once (the heaviest run alone)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    p.add_argument("--out", type=Path, default=Path("bench/results/prunability.json"))
    p.add_argument("--table", action="store_true", help="print --out as a markdown table")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0
    if args.one:
        print(json.dumps(one(args.one)), flush=True)
        return 0
    keys = args.models.split(",") if args.models else models(args.sources.split(","))
    partial = args.out.with_suffix(".jsonl")
    done: dict[str, dict[str, Any]] = {}
    if partial.exists():
        for ln in partial.read_text().splitlines():
            rec = json.loads(ln)
            done[rec["model"]] = rec
    todo = [k for k in keys if k not in done]
    print(f"{len(keys)} models, {len(keys) - len(todo)} already done ({partial})", flush=True)
    start = time.perf_counter()
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("a") as sink:
        for batch, jobs in (
            ([k for k in todo if k not in HEAVY], args.jobs),
            ([k for k in todo if k in HEAVY], 1),
        ):
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(spawn, k, args.timeout) for k in batch]
                for future in as_completed(futures):
                    rec = future.result()
                    done[rec["model"]] = rec
                    sink.write(json.dumps(rec) + "\n")
                    sink.flush()
                    print(line(rec), flush=True)
    recs = [_normalise(done[k]) for k in keys]
    result = {
        **header([]),
        "versions": {
            p: importlib.metadata.version(p)
            for p in ("torch", "torchvision", "timm", "torch-pruning", "fvcore", "prunewise")
        },
        "settings": {
            "ratio": RATIO,
            "exact_tolerance": EXACT_TOL,
            "jobs": args.jobs,
            "torch_threads": 1,
        },
        "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
        "summary": summarise(recs),
        "models": recs,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
