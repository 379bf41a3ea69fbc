"""Model sources (registered, torchvision:, timm:, a user's file or module) and their weights."""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.io import load_checkpoint, save_checkpoint
from prunewise.models.bring import bring_model
from prunewise.models.sources import ModelSource, build_from_source, parse_source
from prunewise.models.weights import Weights, classifier_head, fit_weights, read_weights

NET = """
import torch
from torch import nn

from helper_block import block  # a neighbour of this file


class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, hidden=16):
        super().__init__()
        self.body = nn.Sequential(block(in_channels, hidden), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.body(x), 1))


def make(width=8):
    return Net(num_classes=3, in_channels=1, hidden=width)


def not_a_model():
    return 42
"""
BLOCK = """
from torch import nn


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    folder = tmp_path / "user code"
    folder.mkdir()
    (folder / "helper_block.py").write_text(textwrap.dedent(BLOCK))
    path = folder / "net.py"
    path.write_text(textwrap.dedent(NET))
    return path


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("vgg13_bn_small", ModelSource("registry", "vgg13_bn_small")),
        ("resnet18", ModelSource("registry", "resnet18")),
        ("torchvision:fcn_resnet50", ModelSource("torchvision", "fcn_resnet50")),
        ("timm:resnet18", ModelSource("timm", "resnet18")),
        ("models/net.py:Net", ModelSource("file", "models/net.py", "Net")),
        ("C:\\models\\net.py:Net", ModelSource("file", "C:\\models\\net.py", "Net")),
        ("pkg.sub.mod:build", ModelSource("module", "pkg.sub.mod", "build")),
    ],
)
def test_parse_source(text: str, want: ModelSource) -> None:
    assert parse_source(text) == want
    assert str(want) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("vgg13bn_small", "close matches: vgg13_bn_small"),
        ("", "non-empty"),
        ("torchvision:", "give a torchvision model name"),
        ("net.py:", "after the last ':'"),
        ("net.py:1x", "after the last ':'"),
        ("not a module:f", "names neither"),
    ],
)
def test_bad_sources_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(PrunewiseError, match=words):
        parse_source(text)


def test_a_user_file_builds_and_leaves_sys_path_as_it_was(user_file: Path) -> None:
    before = list(sys.path)
    model = build_from_source(f"{user_file}:Net", num_classes=7, in_channels=1)
    assert sys.path == before and "helper_block" in sys.modules
    assert model.fc.out_features == 7 and model.body[0][0].in_channels == 1
    made = build_from_source(f"{user_file}:make", model_args='{"width": 4}')
    assert made.fc.out_features == 3 and made.fc.in_features == 4  # the factory's own choice


@pytest.mark.parametrize(
    ("factory", "args", "words"),
    [
        ("Nett", None, "has no 'Nett'; close matches: Net"),
        ("not_a_model", None, "returned int, not a torch.nn.Module"),
        ("Net", '{"depth": 3}', "unexpected keyword argument 'depth'"),
        ("Net", "[1, 2]", "must be a JSON object"),
        ("Net", "{oops", "must be a JSON object"),
    ],
)
def test_user_factory_errors(user_file: Path, factory: str, args: str | None, words: str) -> None:
    with pytest.raises(PrunewiseError, match=words):
        build_from_source(f"{user_file}:{factory}", model_args=args)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(PrunewiseError, match="does not exist"):
        build_from_source(f"{tmp_path}/none.py:Net")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_package_xyz\n")
    with pytest.raises(PrunewiseError, match="fails to import: ModuleNotFoundError"):
        build_from_source(f"{broken}:Net")
    with pytest.raises(PrunewiseError, match="not importable"):
        build_from_source("no_such_package_xyz.models:Net")


def test_a_module_source(monkeypatch: pytest.MonkeyPatch, user_file: Path) -> None:
    monkeypatch.syspath_prepend(str(user_file.parent))
    try:
        model = build_from_source("net:Net", num_classes=4, model_args={"hidden": 6})
    finally:
        sys.modules.pop("net", None)  # other tests have their own net.py
    assert model.fc.out_features == 4 and model.fc.in_features == 6


def test_torchvision_sources_download_nothing_and_take_the_data(tmp_path: Path) -> None:
    model = build_from_source("torchvision:resnet18", num_classes=10, in_channels=1)
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1
    seg = build_from_source("torchvision:lraspp_mobilenet_v3_large", num_classes=5)
    out = seg.eval()(torch.zeros(1, 3, 64, 64))["out"]
    assert out.shape == (1, 5, 64, 64)
    with pytest.raises(PrunewiseError, match="close matches: resnet18"):
        build_from_source("torchvision:resnet1888")
    with pytest.raises(PrunewiseError, match="width applies to prunewise models only"):
        build_from_source("torchvision:resnet18", width=0.5)


def test_timm_sources() -> None:
    pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    model = build_from_source("timm:resnet18", num_classes=6, in_channels=1)
    assert model.fc.out_features == 6 and model.conv1.in_channels == 1
    with pytest.raises(PrunewiseError, match="timm has no model"):
        build_from_source("timm:resnet1888")


def test_timm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(PrunewiseError, match="pip install timm"):
        build_from_source("timm:resnet18")


def _resnet_1ch() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ema", "ddp", "compiled"])
def test_weights_in_the_usual_layouts(tmp_path: Path, wrap: str) -> None:
    trained = _resnet_1ch()
    state = trained.state_dict()
    payload: object = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}},
        "model": {"model": state},
        "ema": {"ema": state},
        "ddp": {f"module.{k}": v for k, v in state.items()},
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(payload, tmp_path / "w.pt")
    brought = bring_model(
        "torchvision:resnet18", num_classes=10, in_channels=3, weights=tmp_path / "w.pt"
    )
    assert brought.in_channels == 1  # the weights' stem decides
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(brought.model.eval()(x), trained.eval()(x))


def test_a_file_with_model_and_ema_weights_says_which_it_read(tmp_path: Path) -> None:
    state = {"w": torch.ones(2, 2)}
    torch.save({"model": state, "model_ema": {"w": torch.zeros(2, 2)}}, tmp_path / "w.pt")
    weights = read_weights(tmp_path / "w.pt")
    assert torch.equal(weights.state["w"], state["w"])
    assert weights.where == "key 'model' (read first; the file also holds model_ema)"
    torch.save({"model": "resnet18", "state_dict_ema": state}, tmp_path / "named.pt")
    assert read_weights(tmp_path / "named.pt").where == "key 'state_dict_ema'"  # the only one


def test_a_pickled_model_of_odd_state_is_one_line(tmp_path: Path) -> None:
    odd = nn.Conv2d(1, 2, 3)
    odd._buffers = [1, 2]  # type: ignore[assignment]  # a module keeps its state its own way
    torch.save(odd, tmp_path / "odd.pt")
    with pytest.raises(PrunewiseError, match="cannot be read as a state dict"):
        read_weights(tmp_path / "odd.pt")
    inner = nn.Sequential(nn.Conv2d(1, 2, 3))
    inner.add_module("me", inner)  # a module that holds itself
    torch.save(inner, tmp_path / "loop.pt")
    with pytest.raises(PrunewiseError, match="cannot be read as a state dict"):
        read_weights(tmp_path / "loop.pt")


def test_a_prunewise_checkpoint_is_weights_too(tmp_path: Path) -> None:
    trained = _resnet_1ch()
    path = save_checkpoint(tmp_path / "c.pt", trained, input_shape=(1, 32, 32))
    brought = bring_model("torchvision:resnet18", num_classes=10, in_channels=1, weights=path)
    assert brought.weights is not None and brought.weights.where == "a prunewise checkpoint"


def test_a_pickled_model_is_read_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"model": _Evil(marker), "x": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(PrunewiseError, match=r"holds no state dict.*--trust-pickle"):
        read_weights(tmp_path / "evil.pt")
    torch.save(_Spy(marker), tmp_path / "spy.pt")
    assert set(read_weights(tmp_path / "spy.pt").state) == {"conv.weight", "conv.bias"}
    assert not marker.exists()  # nothing in either file ran
    trained = _resnet_1ch()
    torch.save(trained, tmp_path / "whole.pt")
    torch.save(trained, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("whole.pt", "legacy.pt"):
        weights = read_weights(tmp_path / name)
        assert weights.where == "a pickled model"
        assert list(weights.state) == list(trained.state_dict())
        assert all(torch.equal(v, trained.state_dict()[k]) for k, v in weights.state.items())
    trusted = read_weights(tmp_path / "whole.pt", trust_pickle=True)
    assert trusted.where == "a pickled model" and "conv1.weight" in trusted.state


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


class _Spy(nn.Module):
    """A model whose unpickling would leave a marker; one buffer is not persistent."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker
        self.conv = nn.Conv2d(1, 2, 3)
        self.register_buffer("scratch", torch.zeros(1), persistent=False)

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).touch()
        super().__setstate__(state)


@pytest.mark.parametrize("layout", ["timm", "lightning", "ultralytics", "safetensors", "old"])
def test_weights_from_training_tools(tmp_path: Path, layout: str) -> None:
    trained = _resnet_1ch().eval()
    state = trained.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pt")
    if layout == "timm":  # timm's train.py keeps its arguments and a NumPy metric
        args = argparse.Namespace(model="resnet18", lr=0.1)
        torch.save({"state_dict": state, "args": args, "metric": np.float64(91.5)}, path)
    elif layout == "lightning":  # the LightningModule holds the network as self.model
        wrapped = {f"model.{k}": v for k, v in state.items()} | {"loss.pos_weight": torch.ones(1)}
        torch.save({"state_dict": wrapped, "hyper_parameters": {"lr": 0.1}}, path)
    elif layout == "ultralytics":  # a pickled half-precision model under "model"
        torch.save({"model": copy.deepcopy(trained).half(), "ema": None, "epoch": -1}, path)
    elif layout == "safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:  # written before BatchNorm counted its batches
        torch.save({k: v for k, v in state.items() if "num_batches" not in k}, path)
    brought = bring_model("torchvision:resnet18", num_classes=10, in_channels=3, weights=path)
    assert brought.in_channels == 1
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        got, want = brought.model.eval()(x), trained(x)
    tol = 1e-2 if layout == "ultralytics" else 0.0
    assert torch.allclose(got, want, atol=tol, rtol=tol)


def test_a_new_head_for_weights_of_other_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "w.pt")
    with pytest.raises(PrunewiseError, match=r"1000-class head.*pass --new-head"):
        bring_model("torchvision:resnet18", num_classes=10, weights=tmp_path / "w.pt")
    torch.manual_seed(1)
    fresh = torchvision.models.resnet18(num_classes=10)
    torch.manual_seed(1)
    brought = bring_model(
        "torchvision:resnet18", num_classes=10, weights=tmp_path / "w.pt", new_head=True
    )
    model = brought.model
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert torch.equal(model.fc.weight, fresh.fc.weight)  # the model's own initialisation
    assert model.fc.out_features == 10 and classifier_head(model) == "fc"
    backbone = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "backbone.pt")  # weights saved without any head
    fit_weights(model, read_weights(tmp_path / "backbone.pt"), new_head=True)
    assert classifier_head(torchvision.models.vgg11(num_classes=3)) == "classifier.6"


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _resnet_1ch()


def test_the_model_under_a_prefix_on_either_side(tmp_path: Path) -> None:
    plain = _resnet_1ch().state_dict()
    weights = Weights(tmp_path / "w.pt", dict(plain), "the file")
    wrapper = _Wrapper()
    fitted = weights.for_model(wrapper)
    assert fitted.where == "the file, as the model's 'backbone'"
    fit_weights(wrapper, weights)
    assert torch.equal(wrapper.backbone.conv1.weight, plain["conv1.weight"])
    twice = {f"{who}.{k}": v for who in ("student", "teacher") for k, v in plain.items()}
    with pytest.raises(PrunewiseError, match=r"2 times, under 'student\.', 'teacher\.'"):
        fit_weights(_resnet_1ch(), Weights(tmp_path / "w.pt", twice, "the file"))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s.pop("layer1.0.conv1.weight"), "1 missing \\(layer1.0.conv1.weight\\)"),
        (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "1 unexpected"),
        (
            lambda s: s.__setitem__("layer1.0.conv1.weight", torch.zeros(64, 64, 1, 1)),
            "layer1.0.conv1.weight: \\(64, 64, 1, 1\\) in the file, \\(64, 64, 3, 3\\)",
        ),
        (
            lambda s: s.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}),
            "1000-class head \\(fc.weight\\), the model is built for 10 classes",
        ),
    ],
)  # fmt: skip
def test_weights_that_do_not_fit_are_one_line(tmp_path: Path, change, words: str) -> None:
    state = dict(_resnet_1ch().state_dict())
    change(state)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(PrunewiseError, match=words) as info:
        bring_model(
            "torchvision:resnet18", num_classes=10, in_channels=1, weights=tmp_path / "w.pt"
        )
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty"),
        (b"not torch", "not a file torch.save wrote"),
        (b"hello world", "not one torch.save or safetensors wrote .it starts with b'hell'"),
    ],
)
def test_unreadable_weights(tmp_path: Path, content: bytes, words: str) -> None:
    (tmp_path / "w.pt").write_bytes(content)
    with pytest.raises(PrunewiseError, match=words):
        read_weights(tmp_path / "w.pt")
    torch.save({"epoch": 3}, tmp_path / "none.pt")
    with pytest.raises(PrunewiseError, match="holds no state dict"):
        read_weights(tmp_path / "none.pt")


def test_fit_weights_keeps_the_model_dtype(tmp_path: Path) -> None:
    model = _resnet_1ch()
    torch.save({k: v.double() for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    target = _resnet_1ch()
    fit_weights(target, read_weights(tmp_path / "w.pt"))
    assert target.conv1.weight.dtype == torch.float32


def test_the_checkpoint_of_a_user_model_needs_no_user_code(user_file: Path, tmp_path: Path) -> None:
    model = build_from_source(f"{user_file}:Net", num_classes=5, in_channels=1).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, input_shape=(1, 16, 16))
    x = torch.randn(1, 1, 16, 16)
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "ref.pt")
    for f in user_file.parent.iterdir():
        f.unlink()
    code = (
        "import sys, torch\n"
        "from prunewise.io import load_checkpoint\n"
        "m = load_checkpoint(sys.argv[1]).model.eval()\n"
        "ref = torch.load(sys.argv[2], weights_only=True)\n"
        "assert torch.allclose(m(ref['x']), ref['y'], atol=1e-6)\n"
        "assert not any('prunewise_user' in n or n == 'helper_block' for n in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "ref.pt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(path).model is not None
