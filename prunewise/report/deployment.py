"""Rows of the deployment tables, from deploy.json records (one per model variant).

Pure functions: the CLI prints them, the run report renders them. A record is what
`prunewise.export.deploy` writes; `variants` maps a label ("baseline", "iter 2") to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["deploy_rows", "deployment_rows", "latency_rows", "speedup_rows"]


def _acc(record: Mapping[str, Any], key: str) -> float | None:
    return (record.get("accuracy") or {}).get(key)


def _cost(record: Mapping[str, Any], precision: str, backend: str) -> float | None:
    base, q = _acc(record, f"{backend}_float"), _acc(record, f"{backend}_{precision}")
    return None if base is None or q is None else base - q


def _int8_error(parity: Mapping[str, Any]) -> str:
    error = parity.get("int8_float_rel_error")
    return "-" if error is None else f"{100 * error:.1f} % logit error"


def deploy_rows(record: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """One model: size and accuracy of float and INT8, in PyTorch and ONNX Runtime."""
    size = record.get("bytes") or {}
    parity = record.get("parity") or {}
    headers = [
        "precision",
        "ONNX bytes",
        "PyTorch acc %",
        "ORT acc %",
        "ORT vs PyTorch",
        "vs float",
    ]
    float_check = parity.get("float_max_rel_error")
    agree = parity.get("int8_top1_agreement")
    rows = [
        [
            "float32",
            size.get("float"),
            _acc(record, "pytorch_float"),
            _acc(record, "ort_float"),
            f"max rel. error {float_check:.1e}" if float_check is not None else "-",
            "-",
        ],
        [
            "int8",
            size.get("int8"),
            _acc(record, "pytorch_int8"),
            _acc(record, "ort_int8"),
            f"same top-1 on {agree * 100:.2f} %" if agree is not None else "-",
            _int8_error(parity),
        ],
    ]
    return headers, rows


def latency_rows(record: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """One model: median latency and images/s for each precision, thread count and batch."""
    headers = ["precision", "threads", "batch", "median ms", "images/s"]
    rows = [
        [precision, lat["threads"], lat["batch"], lat["median_ms"], lat["fps"]]
        for precision, grid in (record.get("latency") or {}).items()
        for lat in grid
    ]
    return headers, rows


def deployment_rows(
    variants: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], list[list[Any]]]:
    """Several models: bytes, accuracy float vs INT8 in both runtimes, INT8 cost."""
    headers = [
        "model",
        "float bytes",
        "int8 bytes",
        "PyTorch float %",
        "PyTorch int8 %",
        "ORT float %",
        "ORT int8 %",
        "int8 cost (ORT)",
        "int8 vs float",
        "checks",
    ]
    rows = []
    for label, rec in variants.items():
        size = rec.get("bytes") or {}
        parity = rec.get("parity") or {}
        ok = parity.get("ok", parity.get("float_ok") and parity.get("int8_ok"))
        rows.append(
            [
                label,
                size.get("float"),
                size.get("int8"),
                _acc(rec, "pytorch_float"),
                _acc(rec, "pytorch_int8"),
                _acc(rec, "ort_float"),
                _acc(rec, "ort_int8"),
                _cost(rec, "int8", "ort"),
                _int8_error(parity),
                "passed" if ok else "FAILED",
            ]
        )
    return headers, rows


def _grid(rec: Mapping[str, Any]) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {
        (precision, lat["threads"], lat["batch"]): lat
        for precision, grid in (rec.get("latency") or {}).items()
        for lat in grid
    }


def speedup_rows(
    variants: Mapping[str, Mapping[str, Any]], reference: str
) -> tuple[list[str], list[list[Any]]]:
    """Latency and fps of every variant and precision, with the speed-up over `reference`'s float.

    The reference is the unpruned model; its float latency at the same threads and batch is 1x.
    """
    headers = ["model", "precision", "threads", "batch", "median ms", "images/s", "speed-up"]
    ref = _grid(variants.get(reference) or {})
    rows = []
    for label, rec in variants.items():
        grid = _grid(rec)
        for precision, threads, batch in sorted(grid, key=lambda k: (k[1], k[2], k[0])):
            lat = grid[(precision, threads, batch)]
            base = ref.get(("float", threads, batch))
            speed = base["median_ms"] / lat["median_ms"] if base else None
            rows.append([label, precision, threads, batch, lat["median_ms"], lat["fps"], speed])
    return headers, rows
