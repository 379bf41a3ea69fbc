"""Rows of the deployment tables, from deploy records (one per model variant).

Pure functions: the CLI prints them, the run report renders them. A record is the
`DeployRecord` that `prunewise.export.deploy` returns (deploy.json); `variants` maps a label
("baseline", "iter 2") to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunewise.records.deploy import FAKE_QUANT_REFERENCE, DeployRecord, LatencyRow, Parity

__all__ = ["deploy_rows", "deployment_rows", "latency_rows", "speedup_rows"]


def _int8_error(parity: Parity) -> str:
    error = parity.int8_float_rel_error
    return "-" if error is None else f"{100 * error:.1f} % logit error"


def _agreement(record: DeployRecord) -> str:
    parity, (same, units) = record.parity, record.agreement_terms
    share = f"{parity.int8_top1_agreement * 100:.2f} %"
    where = "" if units == "images" else f" of the {units}"
    if parity.int8_reference == FAKE_QUANT_REFERENCE:
        return f"same {same} on {share}{where}"
    return f"same {same} as its {parity.int8_reference} on {share}{where}"


def deploy_rows(record: DeployRecord) -> tuple[list[str], list[list[Any]]]:
    """One model: size and accuracy of float and INT8, in PyTorch and ONNX Runtime."""
    acc, parity, label = record.accuracy, record.parity, record.score_label
    headers = ["precision", "ONNX bytes", f"PyTorch {label} %", f"ORT {label} %", "ORT vs PyTorch"]
    headers.append("vs float")
    rows = [
        [
            "float32",
            record.float_bytes,
            acc.pytorch_float,
            acc.ort_float,
            f"max rel. error {parity.float_max_rel_error:.1e}",
            "-",
        ],
        [
            "int8",
            record.int8_bytes,
            acc.pytorch_int8,
            acc.ort_int8,
            _agreement(record),
            _int8_error(parity),
        ],
    ]
    return headers, rows


def _rows(record: DeployRecord) -> list[tuple[str, LatencyRow]]:
    return [(precision, lat) for precision, grid in record.latency.items() for lat in grid]


def latency_rows(record: DeployRecord) -> tuple[list[str], list[list[Any]]]:
    """One model: median latency and images/s for each precision, thread count and batch."""
    headers = ["precision", "threads", "batch", "median ms", "images/s"]
    rows = [[p, lat.threads, lat.batch, lat.median_ms, lat.fps] for p, lat in _rows(record)]
    return headers, rows


def deployment_rows(variants: Mapping[str, DeployRecord]) -> tuple[list[str], list[list[Any]]]:
    """Several models: bytes, accuracy float vs INT8 in both runtimes, INT8 cost."""
    headers = [
        "model",
        "float bytes",
        "int8 bytes",
        "PyTorch float %",
        "PyTorch int8 %",
        "ORT float %",
        "ORT int8 %",
        "int8 cost (ORT, points)",
        "int8 vs float",
        "checks",
    ]
    rows = []
    for label, rec in variants.items():
        acc = rec.accuracy
        rows.append(
            [
                label,
                rec.float_bytes,
                rec.int8_bytes,
                acc.pytorch_float,
                acc.pytorch_int8,
                acc.ort_float,
                acc.ort_int8,
                acc.int8_cost,
                _int8_error(rec.parity),
                "passed" if rec.parity.ok else "FAILED",
            ]
        )
    return headers, rows


def speedup_rows(
    variants: Mapping[str, DeployRecord], reference: str
) -> tuple[list[str], list[list[Any]]]:
    """Latency and fps of every variant and precision, with the speed-up over `reference`'s float.

    The reference is the unpruned model; its float latency at the same threads and batch is 1x.
    """
    headers = ["model", "precision", "threads", "batch", "median ms", "images/s", "speed-up"]
    ref = variants.get(reference)
    base = {(lat.threads, lat.batch): lat for p, lat in (_rows(ref) if ref else []) if p == "float"}
    rows = []
    for label, rec in variants.items():
        for precision, lat in sorted(_rows(rec), key=lambda r: (r[1].threads, r[1].batch, r[0])):
            b = base.get((lat.threads, lat.batch))
            speed = b.median_ms / lat.median_ms if b else None
            rows.append([label, precision, lat.threads, lat.batch, lat.median_ms, lat.fps, speed])
    return headers, rows
