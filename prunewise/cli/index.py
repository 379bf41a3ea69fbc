"""The sub-commands by name: what each does and the module that implements it.

Only this table is read to list the commands (`prunewise --help`); a command's module, and
with it torch and whatever the command needs, is imported when that command is parsed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["INDEX", "Command"]

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
"""(add the command's arguments to its parser, run it with the parsed arguments)."""

INDEX: dict[str, tuple[str, str]] = {
    "run": (
        "the whole job: baseline, then measure -> prune -> fine-tune until accuracy drops, report",
        "prunewise.cli.pipeline",
    ),
    "report": ("rebuild report.html of a run folder from its files", "prunewise.cli.pipeline"),
    "models": ("list the registered models", "prunewise.cli.commands"),
    "train": ("train a baseline model and save a checkpoint", "prunewise.cli.commands"),
    "evaluate": ("accuracy of a checkpoint on validation and test data", "prunewise.cli.commands"),
    "analyze": (
        "per-layer input sparsity, |gamma| and the planned pruning (no change)",
        "prunewise.cli.commands",
    ),
    "prune": (
        "one layer-wise refined pruning step: plan, surgery, summary",
        "prunewise.cli.commands",
    ),
    "sparsify": (
        "fine-grained pruning (magnitude, reversed, peak, balanced, N:M) with fine-tuning, "
        "sparse storage with exact bytes, PE-array model, report",
        "prunewise.cli.sparsify",
    ),
    "inspect-sparse": (
        "read a compressed model file (model.pws) back: formats, bytes, non-zeros",
        "prunewise.cli.sparsify",
    ),
    "deploy": (
        "fold BN, quantize INT8, export float and INT8 ONNX, check them in ONNX Runtime, time them",
        "prunewise.cli.deploy",
    ),
    "export": ("write the float (or --int8 QDQ) ONNX model", "prunewise.cli.deploy"),
    "bench-latency": (
        "ONNX Runtime latency and throughput of ONNX files (1 and 2 threads, batch 1 and 32)",
        "prunewise.cli.deploy",
    ),
    "dpu": (
        "modelled DPU (FPGA) profile: per-subgraph GOP, ms, GOP/s, MB, GB/s and fps; with "
        "--compare, the per-subgraph improvement of a pruned model",
        "prunewise.cli.dpu",
    ),
    "dpu-fit": (
        "fit the DPU model's constants to published fps; leave-one-model-out errors",
        "prunewise.cli.dpu",
    ),
}
