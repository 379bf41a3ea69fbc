"""Checkpoints reload without the model's class; plans and JSON are written atomically."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.graph import build_channel_graph, trace
from prunewise.io import atomic_write_json, load_checkpoint, read_json, save_checkpoint
from prunewise.models import build_model, list_models
from prunewise.prune import PruningPlan, apply_plan, uniform_plan


def test_pruned_checkpoint_round_trip(tmp_path: Path, randomize_bn) -> None:
    model = randomize_bn(torchvision.models.get_model("mobilenet_v2", weights=None))
    graph = build_channel_graph(model, (3, 32, 32))
    plan = uniform_plan(graph, 0.5)
    pruned = apply_plan(graph, plan).eval()
    path = save_checkpoint(tmp_path / "p.pt", pruned, input_shape=(3, 32, 32), meta={"k": 1})
    ck = load_checkpoint(path)
    assert ck.meta["k"] == 1 and ck.input_shape == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ck.model.eval()(x), pruned(x))
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json") == plan


def test_checkpoint_loads_in_a_fresh_process_without_the_model_class(tmp_path: Path) -> None:
    class Private(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.fc = torch.nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))

    model = Private().eval()
    save_checkpoint(tmp_path / "m.pt", model, input_shape=(1, 8, 8))
    x = torch.randn(1, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).detach(), tmp_path / "y.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        raw = torch.load({str(tmp_path / "m.pt")!r}, weights_only=True)
        assert raw["format"].startswith("prunewise-checkpoint")
        from prunewise.io import load_checkpoint
        m = load_checkpoint({str(tmp_path / "m.pt")!r}).model.eval()
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        y = torch.load({str(tmp_path / "y.pt")!r}, weights_only=True)
        assert torch.equal(m(x), y)
        assert not any(k.startswith("prunewise.models") or "test_io" in k for k in sys.modules)
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint at all", None, {"format": "other"}, {"weights": torch.zeros(2)}],
)
def test_foreign_files_are_not_checkpoints(tmp_path: Path, content) -> None:
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(PrunewiseError, match=r"not a prunewise checkpoint|does not exist"):
        load_checkpoint(path)


def test_atomic_json_leaves_no_temporary_files(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})
    assert read_json(tmp_path / "a" / "b.json") == {"x": [1, 2]}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PrunewiseError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


# --- round trip: every model the suite uses saves and reloads to the same outputs and dtypes ---

TORCHVISION_ROUND_TRIP = (
    "alexnet",
    "convnext_tiny",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "resnet18",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "swin_t",
    "swin_v2_t",
    "vgg13_bn",
    "vit_b_16",
)
_SIZES = {
    "alexnet": 64,
    "inception_v3": 96,
    "maxvit_t": 224,
    "vit_b_16": 224,
    "swin_t": 64,
    "swin_v2_t": 64,
}


def _round_trip(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """Save, reload, and compare state (keys, dtypes, values) and outputs bit for bit."""
    model = trace(model.eval())  # what is saved: the traced model (tracing may add constants)
    save_checkpoint(path, model, input_shape=shape)
    back = load_checkpoint(path).model.eval()
    mine, theirs = model.state_dict(), back.state_dict()
    assert sorted(theirs) == sorted(mine)
    for key, value in mine.items():
        assert theirs[key].dtype == value.dtype, key
        assert torch.equal(theirs[key], value), key
    dtype = next(model.parameters()).dtype
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


REGISTERED = [i.name for i in list_models() if i.source == "prunewise"]


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_model_round_trips(name: str, tmp_path: Path, randomize_bn) -> None:
    width = None if name.endswith("_small") and name.startswith("resnet") else 0.25
    model = randomize_bn(build_model(name, num_classes=10, in_channels=1, width=width))
    _round_trip(model, (1, 32, 32), tmp_path / "m.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_ROUND_TRIP)
def test_torchvision_models_round_trip(name: str, tmp_path: Path, randomize_bn) -> None:
    model = randomize_bn(build_model(name, num_classes=10))
    size = _SIZES.get(name, 32)
    _round_trip(model, (3, size, size), tmp_path / "m.pt")


class ReadsShapes(torch.nn.Module):
    """A forward that reads shapes (34 of 50 timm CNNs do after pruning)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        scale = y.shape[1] / 8
        return self.fc(y.view(x.shape[0], -1)) * scale + x.size(0) * 0


class CallsTwiceWithConstant(torch.nn.Module):
    """One module called twice, and a tensor constant made at trace time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.offset = torch.nn.Parameter(torch.randn(3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x) + self.offset).flatten(1)


def _masked() -> torch.nn.Module:
    model = ReadsShapes()
    torch.nn.utils.prune.l1_unstructured(model.conv, "weight", amount=0.5)
    torch.nn.utils.prune.random_unstructured(model.fc, "weight", amount=0.3)
    return model


def _weight_normed() -> torch.nn.Module:
    model = ReadsShapes()
    torch.nn.utils.weight_norm(model.fc)
    torch.nn.utils.parametrizations.weight_norm(model.conv)
    return model


def _spectral() -> torch.nn.Module:
    model = ReadsShapes()
    torch.nn.utils.spectral_norm(model.fc)
    torch.nn.utils.parametrizations.orthogonal(model.conv)
    return model


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
@pytest.mark.parametrize(
    ("make", "dtype"),
    [
        (ReadsShapes, torch.float32),
        (ReadsShapes, torch.float64),
        (CallsTwiceWithConstant, torch.float32),
        (CallsTwiceWithConstant, torch.float64),
        (_masked, torch.float32),
        (_weight_normed, torch.float32),
        (_spectral, torch.float32),
    ],
)
def test_user_models_round_trip(make, dtype: torch.dtype, tmp_path: Path, randomize_bn) -> None:
    model = randomize_bn(make()).to(dtype).eval()
    save_checkpoint(tmp_path / "m.pt", model, input_shape=(3, 6, 6))
    back = load_checkpoint(tmp_path / "m.pt").model.eval()
    assert {p.dtype for p in back.parameters()} == {dtype}
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert not any(k.endswith(("_orig", "_mask", "_g", "_v")) for k in back.state_dict())


# --- non-finite weights are refused by name, on load and on save ------------------------------


def _poisoned(path: Path, key: str, value: float) -> Path:
    raw = torch.load(path, weights_only=True)
    raw["state_dict"][key] = raw["state_dict"][key].clone()
    raw["state_dict"][key].view(-1)[0] = value
    torch.save(raw, path)
    return path


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("conv.weight", float("nan"), "NaN"),
        ("bn.weight", float("inf"), "an infinite value"),
        ("bn.running_var", float("-inf"), "an infinite value"),
    ],
)
def test_non_finite_tensors_are_refused(key: str, value: float, kind: str, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", ReadsShapes().eval(), input_shape=(3, 6, 6))
    _poisoned(path, key, value)
    with pytest.raises(PrunewiseError, match=rf"tensor '{key}' holds {kind}"):
        load_checkpoint(path)
    model = ReadsShapes()
    with torch.no_grad():
        dict(model.state_dict(keep_vars=True))[key].view(-1)[0] = value
    with pytest.raises(PrunewiseError, match=rf"cannot save .*tensor '{key}' holds {kind}"):
        save_checkpoint(tmp_path / "n.pt", model, input_shape=(3, 6, 6))
    assert not (tmp_path / "n.pt").exists()


class _PadsToPatches(nn.Module):
    """Pads its input to a multiple of 4 when it is not one: a forward that branches on the
    image size (MobileViT unfolds patches this way), which plain torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4:
            x = torch.nn.functional.pad(x, (0, 4 - x.shape[-1] % 4))
        return self.conv(x)


def test_a_forward_that_branches_on_the_image_size_is_saved_at_its_input_shape(tmp_path) -> None:
    model = _PadsToPatches().eval()
    path = save_checkpoint(tmp_path / "m.pt", model, input_shape=(3, 10, 10))  # failed before
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path).model.eval()(x), model(x))


def test_a_loaded_model_is_in_eval_mode(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    save_checkpoint(tmp_path / "m.pt", model, input_shape=(3, 8, 8))
    assert not load_checkpoint(tmp_path / "m.pt").model.training


def test_a_description_larger_than_its_tensors_allocates_nothing_and_names_the_tensor(
    tmp_path: Path,
) -> None:
    import json

    save_checkpoint(tmp_path / "m.pt", nn.Sequential(nn.Conv2d(3, 4, 3)), input_shape=(3, 8, 8))
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    arch = json.loads(payload["arch"])
    arch["modules"]["0"]["args"].update(in_channels=2**24, out_channels=2**24)  # 10 PB of float
    payload["arch"] = json.dumps(arch)
    torch.save(payload, tmp_path / "big.pt")
    with pytest.raises(PrunewiseError, match=r"size mismatch for 0\.weight"):
        load_checkpoint(tmp_path / "big.pt")  # built for real, it could not be allocated


def test_a_full_disk_asks_for_space_and_resume_not_another_location(tmp_path: Path) -> None:
    import errno

    from prunewise.io import cannot_write

    full = cannot_write(tmp_path / "x", OSError(errno.ENOSPC, "No space left on device"))
    assert "free some space" in full and "--resume" in full and "writable" not in full
    denied = cannot_write(tmp_path / "x", OSError(errno.EACCES, "Permission denied"))
    assert "pick a writable location" in denied


def test_a_copied_state_loads_into_a_layer_with_a_versioned_state_dict() -> None:
    from prunewise.io import load_state

    net = torchvision.models.mnasnet0_5(num_classes=10)
    copy = {k: v.clone() for k, v in net.state_dict().items()}  # a copy keeps no versions
    with pytest.raises(ValueError, match="version"):
        net.load_state_dict(copy)
    load_state(net, copy)  # the model's own versions are given to it


def test_files_of_other_kinds_are_named_with_what_to_do(tmp_path: Path) -> None:
    from prunewise.models.weights import read_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    script = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation
        torch.jit.save(torch.jit.script(net), str(script))
    onnx_file = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
        torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(onnx_file), dynamo=False)
    for path, kind in ((script, "a TorchScript archive"), (onnx_file, "an ONNX model")):
        with pytest.raises(PrunewiseError, match=f"is not a prunewise checkpoint: it is {kind}"):
            load_checkpoint(path)
        with pytest.raises(PrunewiseError, match=f"weights file .* is {kind}"):
            read_weights(path)


def test_frozen_parameters_load_back_frozen_and_the_input_shape_is_checked(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    model.append(nn.Linear(4 * 6 * 6, 3))
    for p in model[:2].parameters():
        p.requires_grad_(False)
    graph = build_channel_graph(model, (1, 8, 8))
    pruned = apply_plan(graph, uniform_plan(graph, 0.5))
    path = save_checkpoint(tmp_path / "m.pt", pruned, input_shape=(1, 8, 8))
    frozen = {n for n, p in load_checkpoint(path).model.named_parameters() if not p.requires_grad}
    assert frozen == {"0.weight", "0.bias", "1.weight", "1.bias"}
    with pytest.raises(PrunewiseError, match=r"input shape \(3, 8, 8\) does not fit the model"):
        save_checkpoint(tmp_path / "x.pt", model, input_shape=(3, 8, 8))
    raw = torch.load(path, weights_only=True)
    raw["frozen"] = ["9.weight"]
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(PrunewiseError, match=r"damaged.*'9.weight', listed as frozen, is no param"):
        load_checkpoint(tmp_path / "bad.pt")


def test_meta_takes_numpy_and_tensor_numbers_and_refuses_what_is_not_json(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    meta = {"acc": np.float32(0.5), "loss": torch.tensor(0.25), "n": np.int64(3)}
    ck = load_checkpoint(
        save_checkpoint(tmp_path / "m.pt", model, input_shape=(1, 4, 4), meta=meta)
    )
    assert (ck.meta["acc"], ck.meta["loss"], ck.meta["n"]) == (0.5, 0.25, 3)
    bad = (({"s": {1}}, "it holds a set"), ({"a": float("nan")}, "Out of range float"))
    for meta, words in bad:
        with pytest.raises(PrunewiseError, match=f"its meta is not JSON .*{words}"):
            save_checkpoint(tmp_path / "x.pt", model, input_shape=(1, 4, 4), meta=meta)


def test_tensors_that_are_not_stored_values_are_refused_without_allocating() -> None:
    from prunewise.io import check_finite

    check_finite({"w": torch.zeros(4).to(torch.float8_e4m3fn)}, "f")  # narrow types are checked
    big = torch.zeros(1).expand(1 << 13, 1 << 12)  # 2^25 elements from one stored value
    cases = (
        ({"w": torch.empty(3, device="meta")}, "'w' is a meta tensor"),
        ({"w": torch.eye(3).to_sparse()}, "'w' is a sparse_coo tensor"),
        ({"w": big}, "'w' of 33,554,432 elements is one stored value repeated"),
        ({"w": torch.tensor([1.0, float("nan")]).to(torch.float8_e4m3fn)}, "'w' holds NaN"),
    )
    for tensors, words in cases:
        with pytest.raises(PrunewiseError, match=words):
            check_finite(tensors, "f")


def test_a_json_record_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PrunewiseError, match="nested too deeply"):
        read_json(tmp_path / "deep.json")
