"""Attention as the layer registry knows it: counted like fvcore, its channels held whole.

An attention layer's embedding dimension is tied to its heads and to the packed query, key
and value projections, so its input and output channels are left whole (blocked, with the
reason named), as are the channels of `torch.einsum` and of torchvision's window-attention
functions. What they cost is counted the way fvcore counts it, so a model's FLOPs match:

- `nn.MultiheadAttention`: the four projections, L x E x E (query), S x kdim x E (key),
  S x vdim x E (value) and L x E x E (output), for L query and S key tokens per sequence;
  the two attention products, 2 x L x S x E, only when the call returns the attention
  weights (then torch computes them with bmm, which fvcore counts; without them it calls
  `scaled_dot_product_attention`, which fvcore does not count);
- `torch.einsum`: numpy's optimal contraction path, MACs = its FLOP count / 2 (fvcore);
- torchvision's `shifted_window_attention` (Swin, Swin V2): the qkv and output projections
  on the padded windows, 4 x C^2 per token, and the two window products, 2 x N^2 x C per
  window of N tokens (fvcore's linear and matmul counters inside it).
"""

from __future__ import annotations

from math import prod

import numpy as np
import torch
from torch import fx, nn

from prunewise.layers.functional import FUNCTIONAL_FLOPS, FUNCTIONAL_FLOPS_BY_NAME
from prunewise.layers.registry import LayerSpec, QuantRule, register_layer

__all__ = ["einsum_flops", "mha_flops", "window_attention_flops"]

_HELD = "its embedding dimension is tied to its heads and packed projections"


def mha_flops(m: nn.MultiheadAttention, inputs: tuple, outputs: tuple) -> int:
    """MACs of nn.MultiheadAttention (see the module docstring)."""
    query = inputs[0]
    key = inputs[1] if len(inputs) > 1 else query
    value = inputs[2] if len(inputs) > 2 else key
    e = m.embed_dim
    tokens_q, tokens_k, tokens_v = prod(query[:-1]), prod(key[:-1]), prod(value[:-1])
    total = tokens_q * e * e * 2 + tokens_k * m.kdim * e + tokens_v * m.vdim * e
    if len(outputs) > 1 and outputs[1] is not None:  # weights returned: two batched products
        seq = 0 if len(query) == 2 else 1 if m.batch_first else 0
        total += 2 * tokens_q * key[seq] * e
    return total


def _mha_rule(op, m: nn.MultiheadAttention) -> None:
    return op.unknown(f"{op.what()} ({type(m).__name__}: {_HELD})")


register_layer(
    nn.MultiheadAttention,
    LayerSpec(channels=_mha_rule, flops=mha_flops, quant=QuantRule.FLOAT, dpu="cpu"),
)


def _shape(value: object) -> tuple[int, ...] | None:
    meta = value.meta.get("tensor_meta") if isinstance(value, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


def einsum_flops(node: fx.Node) -> int:
    """MACs of torch.einsum(equation, *operands) (operands also as one list)."""
    if not node.args or not isinstance(node.args[0], str):
        return 0
    operands = node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], list | tuple):
        operands = tuple(operands[0])
    shapes = [_shape(a) for a in operands]
    if not shapes or any(s is None for s in shapes):
        return 0
    views = [np.broadcast_to(np.zeros(()), s) for s in shapes]  # shapes only, no memory
    report = np.einsum_path(node.args[0].replace(" ", ""), *views, optimize="optimal")[1]
    for line in report.splitlines():
        if "optimized flop" in line.lower():
            return int(float(line.split(":")[-1]) // 2)
    return 0


def window_attention_flops(node: fx.Node) -> int:
    """MACs of torchvision's shifted_window_attention(_v2) (see the module docstring)."""
    x = _shape(node.args[0]) if node.args else None
    window = node.args[4] if len(node.args) > 4 else node.kwargs.get("window_size")
    if x is None or len(x) != 4 or not isinstance(window, list | tuple) or len(window) != 2:
        return 0
    b, h, w, c = x
    wh, ww = int(window[0]), int(window[1])
    padded_h, padded_w = h + (wh - h % wh) % wh, w + (ww - w % ww) % ww
    tokens = b * padded_h * padded_w
    windows = b * (padded_h // wh) * (padded_w // ww)
    n = wh * ww
    return tokens * 4 * c * c + windows * 2 * n * n * c


FUNCTIONAL_FLOPS[torch.einsum] = einsum_flops
for _name in ("shifted_window_attention", "shifted_window_attention_v2"):
    FUNCTIONAL_FLOPS_BY_NAME[f"torchvision.models.swin_transformer.{_name}"] = (
        window_attention_flops
    )
