"""Input sparsity of every convolution (paper A eq. 1 and 2) and |gamma| of every group.

Eq. 1: S = 1 - count_nonzero(x) / numel(x) for the tensor x entering a layer, per image.
Eq. 2: CV = std(S) / mean(S) over images. Zeros are counted per input channel, so each
channel group gets the sparsity of its own channels: for a plain chain this is eq. 1 of the
consumer; where a consumer reads a concatenation, each group gets its own slice; where a group
feeds several consumers, it takes the mean over them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from prunewise.analysis.counting import count_flops, count_params
from prunewise.analysis.importance import group_gamma
from prunewise.given import check_images, model_dtype
from prunewise.graph.groups import ChannelGraph, build_channel_graph

__all__ = [
    "GroupStats",
    "LayerSparsity",
    "ModelAnalysis",
    "analyze",
    "measure_zeros",
]


@dataclass(frozen=True)
class LayerSparsity:
    """Eq. 1 over the whole input of one conv/linear layer, across images."""

    module: str
    channels: int
    mean: float
    std: float
    cv: float | None


@dataclass(frozen=True, eq=False)
class GroupStats:
    """Sparsity and |gamma| of one channel group."""

    group: str
    channels: int
    prunable: bool
    tied: bool
    blocked: str | None
    sparsity: np.ndarray | None  # per image
    gamma: np.ndarray | None  # |gamma| per channel, summed over the group's BatchNorms

    @property
    def sparsity_mean(self) -> float | None:
        """Mean input sparsity over images."""
        return None if self.sparsity is None else float(self.sparsity.mean())

    @property
    def sparsity_std(self) -> float | None:
        """Standard deviation of the input sparsity over images."""
        return None if self.sparsity is None else float(self.sparsity.std())

    @property
    def sparsity_cv(self) -> float | None:
        """Coefficient of variation (eq. 2); None when the mean is zero."""
        m = self.sparsity_mean
        return None if not m else float(self.sparsity.std() / m)


@dataclass(frozen=True, eq=False)
class ModelAnalysis:
    """Everything the policies need: per-group statistics plus model size."""

    graph: ChannelGraph
    layers: tuple[LayerSparsity, ...]
    groups: tuple[GroupStats, ...]
    params: int
    flops: int
    images: int

    def group(self, group_id: str) -> GroupStats:
        """Statistics of one group."""
        return next(g for g in self.groups if g.group == group_id)


def measure_zeros(
    graph: ChannelGraph, images: torch.Tensor, batch_size: int = 64
) -> dict[str, tuple[np.ndarray, int]]:
    """Per consumer layer: zeros per input channel per image (N, C), and elements per channel
    (the channels along the dimension the consumer reads: 1 for a convolution, the last for a
    linear layer). A layer whose input folds several rows per image into its first dimension
    (a vision transformer block on unfolded patches, as MobileViT's, sees batch x patches rows)
    counts those rows with their image."""
    gm = graph.module
    dims = {m.module: m.dim for m in graph.maps if m.role in CONSUMING}
    calls = {m.module for m in graph.maps if m.role == "call"}
    consumers = sorted(dims)
    zeros: dict[str, list[np.ndarray]] = {name: [] for name in consumers}
    elems: dict[str, int] = {}
    batch = {"images": 0}

    def record(name: str, x: torch.Tensor) -> None:
        z = _zeros_per_image(x.movedim(dims[name], 1), batch["images"])
        elems[name] = z.shape[2]
        zeros[name].append(z.sum(dim=2).cpu().numpy())

    def hook(name: str):
        def fn(_module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            record(name, args[0])

        return fn

    modules = [n for n in consumers if n not in calls]
    handles = [gm.get_submodule(n).register_forward_hook(hook(n)) for n in modules]
    run = _Calls(gm, calls, record).run if calls else gm
    was_training = gm.training
    gm.eval()
    param = next(gm.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                chunk = images[start : start + batch_size]
                batch["images"] = chunk.shape[0]
                run(chunk.to(device))
    finally:
        for h in handles:
            h.remove()
        gm.train(was_training)
    return {n: (np.concatenate(zeros[n]), elems[n]) for n in consumers if zeros[n]}


CONSUMING = ("in", "call")
"""The channel-map roles whose input sparsity is measured: a layer's input, a call's."""


class _Calls(fx.Interpreter):
    """Runs the graph node by node, handing the input of each named call (F.conv2d, F.linear
    standing for a layer: no module to hook) to `record`."""

    def __init__(
        self, gm: fx.GraphModule, calls: set[str], record: Callable[[str, torch.Tensor], None]
    ) -> None:
        super().__init__(gm)
        self.calls, self.record = calls, record

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.calls:
            self.record(n.name, self.env[n.args[0]])  # type: ignore[index]
        return super().run_node(n)


def _zeros_per_image(x: torch.Tensor, images: int) -> torch.Tensor:
    """Zero mask of a layer input `x` (rows, C, ...) as (images, C, elements): rows are the
    images, or a whole number of rows per image (image-major, as a reshape that folds patches
    or time steps into the batch leaves them); otherwise every image gets the zero fraction of
    the whole input."""
    rows, channels = x.shape[0], x.shape[1]
    if rows == images or images <= 0:
        return (x == 0).reshape(rows, channels, -1)
    if rows % images == 0:
        per = x.reshape(images, rows // images, channels, -1).transpose(1, 2)
        return (per == 0).reshape(images, channels, -1)
    flat = (x == 0).transpose(0, 1).reshape(1, channels, -1)
    return flat.expand(images, channels, flat.shape[2])


def _layer_sparsity(name: str, z: np.ndarray, elems: int) -> LayerSparsity:
    s = z.sum(axis=1) / (z.shape[1] * elems)
    mean = float(s.mean())
    return LayerSparsity(
        name, z.shape[1], mean, float(s.std()), float(s.std() / mean) if mean else None
    )


def analyze(
    model: nn.Module | ChannelGraph,
    images: torch.Tensor,
    *,
    input_shape: tuple[int, ...] | None = None,
    batch_size: int = 64,
) -> ModelAnalysis:
    """Measure input sparsity on `images` (N, C, H, W) and collect |gamma| for every group.
    Raises PrunewiseError for images that are not a batch of finite float images of the traced
    size (`prunewise.given.check_images`)."""
    module = model.module if isinstance(model, ChannelGraph) else model
    shape = model.input_shape if isinstance(model, ChannelGraph) else input_shape
    images = check_images(images, shape, dtype=model_dtype(module))
    if isinstance(model, ChannelGraph):
        graph = model
    else:
        graph = build_channel_graph(model, tuple(shape or images.shape[1:]))
    zeros = measure_zeros(graph, images, batch_size)
    groups = []
    for gi, g in enumerate(graph.groups):
        per_consumer = []
        for cmap in graph.maps:
            if cmap.role not in CONSUMING or cmap.module not in zeros:
                continue
            pos = np.nonzero(cmap.group == gi)[0]
            if pos.size:
                z, elems = zeros[cmap.module]
                per_consumer.append(z[:, pos].sum(axis=1) / (pos.size * elems))
        sparsity = np.mean(per_consumer, axis=0) if per_consumer else None
        groups.append(
            GroupStats(
                g.id, g.size, g.prunable, g.tied, g.blocked, sparsity, group_gamma(graph, g.id)
            )
        )
    layers = tuple(_layer_sparsity(n, z, e) for n, (z, e) in zeros.items())
    order = {m.module: i for i, m in enumerate(graph.maps)}
    layers = tuple(sorted(layers, key=lambda ls: order[ls.module]))
    return ModelAnalysis(
        graph=graph,
        layers=layers,
        groups=tuple(groups),
        params=count_params(graph.module),
        flops=count_flops(graph.module, graph.input_shape),
        images=int(images.shape[0]),
    )
