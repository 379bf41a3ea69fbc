"""The contract every pruned model must meet, checked the same way for every pattern.

`check_contract(model, shape)` prunes a random 40 % of every prunable group's units and
checks: exact surgery in float64 (the pruned model's output equals the original's with the
removed channels zeroed, to 1e-5 of the output scale; for groups combined across channels, a
LayerNorm over them say, the pruned model only has to run), FLOPs and parameters equal to
fvcore's, a checkpoint that loads back with the same outputs, float ONNX parity in ONNX
Runtime (1e-4), and INT8: quantized, exported and run in ONNX Runtime, or refused in one line
that names `register_quant_rule`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from prunewise.analysis import count_flops, count_params
from prunewise.errors import PrunewiseError
from prunewise.export import export_float, export_int8, ort_logits, ort_session
from prunewise.graph import ChannelGraph, build_channel_graph
from prunewise.io import load_checkpoint, save_checkpoint
from prunewise.prune import GroupDecision, PruningPlan, apply_plan
from prunewise.prune.surgery import zeroed_copy
from prunewise.quant import Int8Config, quantize


@dataclass(frozen=True)
class Outcome:
    """What the contract found for one model."""

    graph: ChannelGraph
    pruned: nn.Module
    removed: dict[str, int]
    exact: bool


def random_plan(graph: ChannelGraph, ratio: float = 0.4, seed: int = 0) -> PruningPlan:
    """Remove `ratio` of the units of every prunable group (at least one, keeping one)."""
    rng = np.random.default_rng(seed)
    decisions = []
    for g in graph.groups:
        if not g.prunable:
            continue
        remove = max(1, min(g.size - 1, round(ratio * g.size)))
        kept = sorted(rng.choice(g.size, g.size - remove, replace=False).tolist())
        decisions.append(GroupDecision(g.id, g.size, tuple(kept), ratio))
    return PruningPlan(tuple(decisions), graph.input_shape, {"method": "random"})


def fvcore_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    logging.disable(logging.WARNING)
    try:
        analysis = FlopCountAnalysis(model.eval(), torch.zeros(1, *shape))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return int(analysis.total())
    finally:
        logging.disable(logging.NOTSET)


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            for name in ("running_mean", "running_var"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor):
                    t.copy_(torch.rand(t.shape, generator=g) * 0.5 + (0.5 if "var" in name else 0))
            for p in m.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def check_contract(
    model: nn.Module, shape: tuple[int, ...], tmp_path: Path, *, int8: bool = True
) -> Outcome:
    model = _randomize(model)
    graph = build_channel_graph(model, shape)
    plan = random_plan(graph)
    assert plan.decisions, "nothing in this model can be pruned"
    pruned = apply_plan(graph, plan).eval()
    removed = {d.group: d.removed for d in plan.decisions}
    mixed = any(graph.group(d.group).mixed for d in plan.decisions)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = pruned.double()(x.double())
        if not mixed:
            want = zeroed_copy(graph, plan).double().eval()(x.double())
            scale = want.abs().max().clamp_min(1e-12)
            assert float((got - want).abs().max() / scale) <= 1e-5
    pruned = pruned.float()
    assert count_params(pruned) == sum(p.numel() for p in pruned.parameters())
    for m in (model, pruned):
        ours, ref = count_flops(m, shape), fvcore_flops(m, shape)
        assert abs(ours - ref) <= 0.01 * max(ref, 1), (ours, ref)
    assert count_flops(pruned, shape) < count_flops(model, shape)
    path = save_checkpoint(tmp_path / "pruned.pt", pruned, input_shape=shape)
    back = load_checkpoint(path).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), pruned(x), rtol=0, atol=0)
        reference = pruned(x).numpy()
    try:
        onnx = export_float(pruned, tmp_path / "pruned.onnx", shape)
    except PrunewiseError as exc:  # only an operation torch cannot export, as unpruned
        assert "ONNX export failed" in str(exc)
        with pytest.raises(PrunewiseError, match="ONNX export failed"):
            export_float(model, tmp_path / "original.onnx", shape)
        return Outcome(graph, pruned, removed, not mixed)
    ort = ort_logits(ort_session(onnx), x)
    assert np.abs(ort - reference).max() <= 1e-4 * max(np.abs(reference).max(), 1e-12)
    if int8:
        _check_int8(pruned, shape, tmp_path)
    return Outcome(graph, pruned, removed, not mixed)


def _check_int8(model: nn.Module, shape: tuple[int, ...], tmp_path: Path) -> None:
    images = torch.randn(32, *shape, generator=torch.Generator().manual_seed(2))
    try:
        q = quantize(model, images, Int8Config(calibration="minmax", calibration_images=32))
    except PrunewiseError as exc:
        assert "register_quant_rule" in str(exc)
        return
    path = export_int8(q, tmp_path / "pruned.int8.onnx")
    out = ort_logits(ort_session(path), images)
    with torch.no_grad():
        ref = q.model(images).numpy()
    assert out.shape == ref.shape
    assert np.isfinite(out).all()
