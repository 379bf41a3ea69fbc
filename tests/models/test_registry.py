"""The model registry: names, torchvision models, argument checks and error messages."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.models import (
    ModelInfo,
    build_model,
    list_models,
    model_exists,
    register_model,
    registry,
)


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to fetch weights."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register models without leaving them behind."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.usefixtures("no_downloads")
@pytest.mark.parametrize(("name", "num_classes"), [("resnet18", 7), ("mobilenet_v2", 100)])
def test_torchvision_models_resolve(name: str, num_classes: int) -> None:
    model = build_model(name, num_classes=num_classes).eval()
    assert type(model).__module__.startswith("torchvision.models")
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, num_classes)


@pytest.mark.usefixtures("no_downloads")
def test_googlenet_gives_plain_logits_in_train_mode() -> None:
    model = build_model("googlenet", num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(PrunewiseError) as info:
        build_model("vgg13_bn_smal")
    message = str(info.value)
    assert "unknown model 'vgg13_bn_smal'" in message
    assert "vgg13_bn_small" in message
    assert "`prunewise models`" in message
    assert "\n" not in message


def test_unknown_name_without_close_matches() -> None:
    with pytest.raises(PrunewiseError, match="prunewise models") as info:
        build_model("qqqqqqqq")
    assert "close matches" not in str(info.value)


def test_a_name_that_is_not_a_string_is_refused_clearly() -> None:
    info = list_models()[0]
    with pytest.raises(PrunewiseError, match="model name must be a string, got ModelInfo"):
        build_model(info)  # type: ignore[arg-type]


def test_torchvision_rejects_width() -> None:
    with pytest.raises(PrunewiseError, match="width applies to prunewise models only"):
        build_model("resnet18", width=0.5)
    with pytest.raises(PrunewiseError, match="width applies to prunewise models only"):
        build_model("resnet18", width=1.0)


def test_torchvision_rejects_grayscale() -> None:
    with pytest.raises(PrunewiseError, match="3-channel input") as info:
        build_model("mobilenet_v2", in_channels=1)
    assert "channels=3" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1},
        {"num_classes": 0},
        {"num_classes": 2.5},
        {"num_classes": True},
        {"in_channels": 0},
        {"in_channels": 1.0},
        {"width": 0},
        {"width": -0.5},
        {"width": 4.01},
        {"width": True},
        {"width": "0.5"},
    ],
)
@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_bad_arguments(name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(PrunewiseError):
        build_model(name, **kwargs)  # type: ignore[arg-type]


def test_width_bounds_are_inclusive_at_4() -> None:
    model = build_model("resnet20", num_classes=2, width=4)
    assert model.fc.in_features == 256
    assert build_model("resnet20", width=0.01).conv1.out_channels == 8


def test_list_models_has_both_sources_and_no_duplicates() -> None:
    infos = list_models()
    assert all(isinstance(i, ModelInfo) for i in infos)
    names = [i.name for i in infos]
    assert len(names) == len(set(names))
    assert {i.source for i in infos} == {"prunewise", "torchvision"}
    by_name = {i.name: i for i in infos}
    assert by_name["vgg13_bn_small"].source == "prunewise"
    assert by_name["resnet18"].source == "torchvision"
    assert by_name["resnet18"].family == "resnet"
    assert "Deep Residual Learning" in by_name["resnet18"].description
    assert "<http" not in by_name["resnet18"].description
    assert all(i.description and i.family for i in infos)
    assert "fasterrcnn_resnet50_fpn" not in by_name  # detection models are not classifiers
    assert "quantized_resnet18" not in by_name
    with pytest.raises(dataclasses.FrozenInstanceError):
        infos[0].name = "x"  # type: ignore[misc]


def test_model_exists() -> None:
    assert model_exists("vgg16_bn_small")
    assert model_exists("resnet50")
    assert not model_exists("fasterrcnn_resnet50_fpn")
    assert not model_exists("no_such_model")


def test_registering_a_duplicate_raises() -> None:
    with pytest.raises(PrunewiseError, match="already registered"):
        register_model("vgg13_bn_small", family="vgg", description="again")


@pytest.mark.usefixtures("scratch_registry")
def test_register_and_build_a_new_model() -> None:
    seen: dict[str, object] = {}

    @register_model("tiny_test_net", family="test", description="a test model")
    def tiny(*, num_classes: int, in_channels: int, width: float) -> nn.Module:
        seen.update(num_classes=num_classes, in_channels=in_channels, width=width)
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    assert model_exists("tiny_test_net")
    assert list_models()[len(registry._REGISTRY) - 1] == ModelInfo(
        "tiny_test_net", "prunewise", "test", "a test model"
    )
    build_model("tiny_test_net", num_classes=4, in_channels=2)
    assert seen == {"num_classes": 4, "in_channels": 2, "width": 1.0}
    build_model("tiny_test_net", width=0.5)
    assert seen["width"] == 0.5
    with pytest.raises(PrunewiseError, match="already registered"):
        register_model("tiny_test_net", family="test", description="again")(tiny)


@pytest.mark.parametrize("name", ["", "Upper", "1abc", "with-dash", "with space"])
def test_register_rejects_bad_names(name: str) -> None:
    with pytest.raises(PrunewiseError, match="invalid model name"):
        register_model(name, family="test", description="bad")


def test_prunewise_names_shadow_torchvision(scratch_registry: None) -> None:
    register_model("resnet18", family="test", description="shadow")(
        lambda *, num_classes, in_channels, width: nn.Identity()
    )
    hits = [i for i in list_models() if i.name == "resnet18"]
    assert [i.source for i in hits] == ["prunewise"]
    assert isinstance(build_model("resnet18"), nn.Identity)


def test_torchvision_is_not_listed_at_import() -> None:
    code = (
        "import prunewise.models\n"
        "from prunewise.models import registry\n"
        "print(registry._torchvision_infos.cache_info().currsize)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "0"
