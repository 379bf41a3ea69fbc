"""Compensation of removed channels: what a removed channel still sent to the next layer, put
back into that layer's bias.

A channel whose BatchNorm gamma is 0 but whose beta is positive is not silent: it sends the
constant relu(beta) to every layer that reads it. Removing it drops that constant and moves
the output. For each consumer of a removed channel c (a convolution with groups = 1 or a
linear layer), `compensation` measures the mean m_c of c at the consumer's input on a batch of
images and gives the consumer's output the shift it loses,

    d[o] = sum over removed c of  m_c * sum_k W[o, c, k]      (k: the kernel positions),

which `apply_compensation` adds to the pruned consumer's bias (a bias is made where it has
none), or, where a BatchNorm reads the consumer alone, subtracts from that norm's running
mean (the same output in eval mode, no new parameter; in training mode the batch mean absorbs
the shift either way). The shift is exact when the removed channel is constant over the
images and positions the consumer reads (gamma = 0) and the consumer adds no zero padding
around it (1 x 1 convolutions, linear layers, unpadded convolutions); elsewhere it is the
least-squares constant for the consumer's output, exact away from the padded border.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import fx, nn

from prunewise.graph.groups import ChannelGraph

__all__ = ["apply_compensation", "compensation"]


def _consumer(module: nn.Module) -> bool:
    """A layer that sums over its input channels: conv with groups = 1, or linear."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.groups == 1 and not module.transposed
    return isinstance(module, nn.Linear)


def _removed_inputs(
    graph: ChannelGraph, masks: dict[int, np.ndarray]
) -> dict[str, tuple[int, np.ndarray]]:
    """Consumer name -> (channel dim of its input, positions of removed input channels)."""
    out: dict[str, tuple[int, np.ndarray]] = {}
    for m in graph.maps:
        if m.role != "in" or not _consumer(graph.module.get_submodule(m.module)):
            continue
        gone = np.zeros(m.group.shape[0], dtype=bool)
        for gi in np.unique(m.group):
            if int(gi) in masks:
                pos = np.nonzero(m.group == gi)[0]
                gone[pos] = ~masks[int(gi)][m.index[pos]]
        if gone.any():
            out[m.module] = (m.dim, np.nonzero(gone)[0])
    return out


@contextmanager
def _inputs_of(model: nn.Module, names: list[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: seen[n].append(args[0].detach())
        )
        for n in names
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _channel_means(x: torch.Tensor, dim: int, positions: np.ndarray) -> torch.Tensor:
    """Mean of each channel at `positions` of dimension `dim`, over every other dimension."""
    x = x.double().movedim(dim, 0)
    index = torch.as_tensor(positions, dtype=torch.long, device=x.device)
    return x.index_select(0, index).reshape(len(positions), -1).mean(1)


def compensation(
    graph: ChannelGraph, masks: dict[int, np.ndarray], images: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Consumer name -> the shift of each of its (unpruned) output channels that the removed
    input channels contributed on `images` (float64, shape (out_channels,)); see the module
    docstring. `masks`: group index -> bool mask of kept channels (the plan's)."""
    removed = _removed_inputs(graph, masks)
    if not removed:
        return {}
    model = graph.module
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad(), _inputs_of(model, list(removed)) as seen:
            model.eval()(images.to(device))
    finally:
        model.train(was_training)
    shifts: dict[str, torch.Tensor] = {}
    for name, (dim, positions) in removed.items():
        if not seen[name]:
            continue  # not reached by this input: nothing measured, nothing changed
        means = torch.stack([_channel_means(x, dim, positions) for x in seen[name]]).mean(0)
        weight = model.get_submodule(name).weight.detach().double()
        cols = weight.index_select(1, torch.as_tensor(positions, device=weight.device))
        summed = cols.reshape(cols.shape[0], cols.shape[1], -1).sum(2)  # (out, removed)
        shifts[name] = (summed @ means.to(summed.device)).cpu()
    return shifts


def _single_norm_user(gm: fx.GraphModule, name: str) -> nn.Module | None:
    """The BatchNorm module that alone reads consumer `name`'s output, if there is one."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == name:
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module":
                norm = gm.get_submodule(str(users[0].target))
                if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats:
                    return norm
    return None


def apply_compensation(
    pruned: fx.GraphModule,
    shifts: dict[str, torch.Tensor],
    kept_out: dict[str, np.ndarray],
) -> None:
    """Add each consumer's shift (at its kept output channels, `kept_out[name]`, all when
    absent) to the pruned model: into the BatchNorm that alone reads it (running mean), else
    into its bias, made where it has none. In place."""
    with torch.no_grad():
        for name, shift in shifts.items():
            layer = pruned.get_submodule(name)
            if name in kept_out:
                shift = shift[torch.as_tensor(kept_out[name], dtype=torch.long)]
            norm = _single_norm_user(pruned, name)
            if layer.bias is None and norm is not None:
                norm.running_mean.sub_(shift.to(norm.running_mean))
            elif layer.bias is not None:
                layer.bias += shift.to(layer.bias)
            else:
                layer.bias = nn.Parameter(shift.to(layer.weight))
