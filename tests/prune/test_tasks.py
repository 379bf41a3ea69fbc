"""Segmentation models pruned whole, detectors pruned in their backbone (issue 15, item 4)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from prunewise.analysis import count_flops
from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph
from prunewise.prune import apply_plan, get_scope, replace_scope, uniform_plan
from prunewise.prune.surgery import zeroed_copy

SEGMENTATION = torchvision.models.list_models(module=torchvision.models.segmentation)


def _exact_error(graph, plan, shape: tuple[int, ...]) -> float:
    """Largest relative difference, over every output, between the pruned model and the
    original with the removed channels zeroed (float64)."""
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        got = apply_plan(graph, plan).double().eval()(x)
        want = zeroed_copy(graph, plan).double().eval()(x)
    if not isinstance(want, dict):
        got, want = {"out": got}, {"out": want}
    assert got.keys() == want.keys()
    return max(float((got[k] - want[k]).abs().max() / want[k].abs().max()) for k in want)


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_models_prune_exactly(name: str) -> None:
    assert len(SEGMENTATION) >= 6  # fcn x2, deeplabv3 x3, lraspp
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=5, aux_loss=name.startswith("fcn")
    ).eval()
    shape = (3, 64, 64)
    graph = build_channel_graph(model, shape)
    plan = uniform_plan(graph, 0.4, prune_tied=True, importance="l2")
    assert sum(d.removed for d in plan.decisions) > 0
    assert _exact_error(graph, plan, shape) <= 1e-5
    pruned = apply_plan(graph, plan)
    assert count_flops(pruned, shape) < 0.5 * count_flops(model, shape)
    out = pruned.eval()(torch.zeros(1, *shape))
    assert out["out"].shape == (1, 5, 64, 64)


DETECTORS = [
    "fasterrcnn_mobilenet_v3_large_fpn",
    "ssdlite320_mobilenet_v3_large",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
]


@pytest.mark.parametrize("name", DETECTORS)
def test_a_detector_prunes_its_backbone_in_place(name: str) -> None:
    torch.manual_seed(0)
    small = {} if name.startswith("ssd") else {"min_size": 320, "max_size": 320}  # fast on CPU
    detector = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, **small
    ).eval()
    with pytest.raises(PrunewiseError, match=r"scope=.*backbone"):
        build_channel_graph(detector, (3, 320, 320))
    backbone, shape = get_scope(detector, "backbone"), (3, 320, 320)
    graph = build_channel_graph(backbone, shape)
    plan = uniform_plan(graph, 0.4, prune_tied=True, importance="l2")
    assert _exact_error(graph, plan, shape) <= 1e-5  # every output map (FPN levels)
    pruned = replace_scope(detector, "backbone", apply_plan(graph, plan).eval())
    assert get_scope(detector, "backbone") is backbone  # the input is not modified
    assert count_flops(pruned.backbone, shape) < 0.6 * count_flops(backbone, shape)
    with torch.no_grad():
        found = pruned.eval()([torch.rand(3, 240, 320)])
    assert set(found[0]) == {"boxes", "labels", "scores"}


def test_scope_names_are_checked() -> None:
    model = torchvision.models.resnet18()
    assert get_scope(model, "layer1.0") is model.layer1[0]
    with pytest.raises(PrunewiseError, match="has no module 'layer9': the model has conv1"):
        get_scope(model, "layer9")
    with pytest.raises(PrunewiseError, match="layer1 has 0, 1"):
        get_scope(model, "layer1.7")
    with pytest.raises(PrunewiseError, match="dotted module name"):
        get_scope(model, ".layer1")
