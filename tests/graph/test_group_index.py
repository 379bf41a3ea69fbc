"""The indexed group lookups answer what a scan over every map would."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision

from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "vgg13_bn"])
def test_lookups_match_a_full_scan(name: str) -> None:
    graph = build_channel_graph(torchvision.models.get_model(name, weights=None), (3, 64, 64))
    for gi, g in enumerate(graph.groups):
        assert graph.group(g.id) is g and graph.group_index(g.id) == gi
        touched = {role: [] for role in ("out", "in", "norm", "depthwise")}
        for role in touched:
            expected = [(m, np.nonzero(m.group == gi)[0]) for m in graph.maps if m.role == role]
            expected = [(m, pos) for m, pos in expected if pos.size]
            got = list(graph.maps_of(g.id, role))
            assert [m for m, _ in got] == [m for m, _ in expected]
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected, strict=True))
            for m, _ in expected:
                if m.module not in touched[role]:
                    touched[role].append(m.module)
        assert g.norms == tuple(touched["norm"]) and g.consumers == tuple(touched["in"])
        assert g.depthwise == tuple(touched["depthwise"])
        assert sum(pos.size for _, pos in graph.channels_of(gi)) == sum(
            int((m.group == gi).sum()) for m in graph.maps
        )


def test_unknown_group_is_a_clear_error() -> None:
    graph = build_channel_graph(torchvision.models.get_model("resnet18", weights=None), (3, 32, 32))
    with pytest.raises(PrunewiseError, match="no channel group 'nope'"):
        graph.group("nope")
    with pytest.raises(PrunewiseError, match="no channel group 'nope'"):
        graph.group_index("nope")
