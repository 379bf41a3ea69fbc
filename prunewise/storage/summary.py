"""A whole model in sparse storage: the smallest format per layer, totals, the compression ratio.

Weights of convolutions and linear layers get the format with the fewest bits among the
candidates (paper B picks formats per layer type; here each layer gets its own best); every
other parameter and buffer (biases, BatchNorm) is counted as dense fp32 on both sides of the
ratio, so the ratio describes the whole model file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from prunewise.storage.codec import best_format, default_candidates
from prunewise.storage.container import read_compressed, write_compressed
from prunewise.storage.spec import Spec
from prunewise.storage.values import quantize_values

__all__ = ["LayerStorage", "StorageSummary", "model_weights", "plan_storage", "write_model"]

_MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerStorage:
    """One layer's weight: its shape, non-zeros, the chosen format and its exact size."""

    name: str
    shape: tuple[int, ...]
    nonzeros: int
    spec: Spec
    bits: int

    @property
    def dense_bytes(self) -> int:
        """fp32 dense size of the weight."""
        return int(np.prod(self.shape)) * 4

    @property
    def bytes(self) -> int:
        """Size in the chosen format (whole bytes)."""
        return -(-self.bits // 8)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        numel = int(np.prod(self.shape))
        return {
            "name": self.name,
            "shape": list(self.shape),
            "sparsity": 1.0 - self.nonzeros / numel if numel else 0.0,
            "format": self.spec.label,
            "spec": self.spec.to_dict(),
            "bytes": self.bytes,
            "dense_fp32_bytes": self.dense_bytes,
            "ratio": self.dense_bytes / self.bytes if self.bytes else float("inf"),
        }


@dataclass(frozen=True)
class StorageSummary:
    """Every layer's choice, plus the dense fp32 bytes of the other parameters."""

    layers: tuple[LayerStorage, ...]
    other_bytes: int

    @property
    def dense_bytes(self) -> int:
        """The whole model in dense fp32."""
        return sum(r.dense_bytes for r in self.layers) + self.other_bytes

    @property
    def compressed_bytes(self) -> int:
        """The whole model with every layer in its chosen format."""
        return sum(r.bytes for r in self.layers) + self.other_bytes

    @property
    def ratio(self) -> float:
        """fp32 dense bytes / compressed bytes (paper B: 28x on AlexNet)."""
        return self.dense_bytes / self.compressed_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with the totals."""
        return {
            "layers": [r.to_dict() for r in self.layers],
            "other_bytes": self.other_bytes,
            "dense_fp32_bytes": self.dense_bytes,
            "compressed_bytes": self.compressed_bytes,
            "ratio": self.ratio,
        }


def model_weights(model: nn.Module) -> tuple[dict[str, np.ndarray], int]:
    """Conv/linear weights by layer name, and the fp32 bytes of every other tensor."""
    weights = {
        name: m.weight.detach().cpu().numpy().astype(np.float32)
        for name, m in model.named_modules()
        if isinstance(m, _MASKABLE)
    }
    keys = {f"{name}.weight" for name in weights}
    other = sum(
        t.numel() * 4
        for k, t in model.state_dict().items()
        if k not in keys and t.is_floating_point()
    )
    return weights, int(other)


def plan_storage(
    weights: Mapping[str, np.ndarray],
    other_bytes: int = 0,
    *,
    values: str = "int8",
    codebook_bits: int = 5,
    candidates: Sequence[Spec] | None = None,
) -> StorageSummary:
    """The smallest format of each weight among the candidates (default: every format).

    Each candidate is counted on the weight as it would be stored (`quantize_values`: values
    that round to zero in INT8 or the codebook drop out), so the counted bytes are those that
    `write_model` writes.
    """
    specs = tuple(candidates or default_candidates(values=values, codebook_bits=codebook_bits))
    by_values: dict[tuple[str, int], list[Spec]] = {}
    for spec in specs:
        by_values.setdefault((spec.values, spec.codebook_bits), []).append(spec)
    rows = []
    for name, w in weights.items():
        best: LayerStorage | None = None
        for group in by_values.values():
            stored = quantize_values(w, group[0])
            spec, bits = best_format(stored, group)
            if best is None or bits < best.bits:
                nonzeros = int(np.count_nonzero(stored))
                best = LayerStorage(name, tuple(w.shape), nonzeros, spec, bits)
        rows.append(best)
    return StorageSummary(tuple(r for r in rows if r is not None), int(other_bytes))


def write_model(
    path: str | Path, weights: Mapping[str, np.ndarray], summary: StorageSummary
) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Write the weights in their chosen formats; return the file size, the values written
    (as `quantize_values` gives them) and what the file reads back as."""
    specs = {r.name: r.spec for r in summary.layers}
    stored = {name: quantize_values(w, specs[name]) for name, w in weights.items()}
    size = write_compressed(path, stored, specs)
    return size, stored, read_compressed(path)
