"""A checkpoint's description calls only allow-listed operations, on load and on save."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from prunewise.cli import main
from prunewise.errors import PrunewiseError
from prunewise.graph import allow_function
from prunewise.graph.allowlist import function_by_name, function_name, module_type_by_name
from prunewise.io import load_checkpoint, save_checkpoint


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


@pytest.fixture
def saved(tmp_path: Path) -> dict:
    """The raw payload of a genuine checkpoint (the description as a dict under 'arch')."""
    path = save_checkpoint(tmp_path / "m.pt", Small().eval(), input_shape=(1, 8, 8))
    raw = torch.load(path, weights_only=True)
    raw["arch"] = json.loads(raw["arch"])
    return raw


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "crafted.pt"
    torch.save({**raw, "arch": json.dumps(raw["arch"])}, path)
    return path


def _node(raw: dict, target: str) -> dict:
    return next(n for n in raw["arch"]["nodes"] if n["target"] == target)


def _call(target: str, marker: Path) -> Callable[[dict], None]:
    def craft(raw: dict) -> None:
        node = _node(raw, "torch.relu")
        node["target"] = target
        node["args"] = {"tuple": [f"touch {marker}"]}

    return craft


def _method(name: str) -> Callable[[dict], None]:
    def craft(raw: dict) -> None:
        node = _node(raw, "torch.relu")
        node["op"], node["target"] = "call_method", name

    return craft


def _getattr(attr: str) -> Callable[[dict], None]:
    def craft(raw: dict) -> None:
        node = _node(raw, "torch.relu")
        node["target"] = "getattr"
        node["args"] = {"tuple": [node["args"]["tuple"][0], attr]}

    return craft


def _module_type(type_name: str) -> Callable[[dict], None]:
    def craft(raw: dict) -> None:
        raw["arch"]["modules"]["conv"]["type"] = type_name

    return craft


def _dtype(raw: dict) -> None:
    node = _node(raw, "torch.relu")
    node["kwargs"] = {"dict": {"dtype": {"dtype": "load"}}}


def _module_path(raw: dict) -> None:
    raw["arch"]["modules"]["__class__"] = raw["arch"]["modules"].pop("conv")


def _placeholder(marker: Path) -> Callable[[dict], None]:
    def craft(raw: dict) -> None:  # fx writes an input's name into `def forward(self, ...)`
        node = next(n for n in raw["arch"]["nodes"] if n["op"] == "placeholder")
        node["target"] = f"x=__import__('os').system('touch {marker}')"

    return craft


def _quoted_module(marker: Path) -> Callable[[dict], None]:
    def craft(raw: dict) -> None:  # fx writes a module's name into getattr(self, "...")
        code = "+".join(f"chr({ord(c)})" for c in f"__import__('os').system('touch {marker}')")
        evil = f'a"+str(exec({code}))+"'
        raw["arch"]["modules"][evil] = raw["arch"]["modules"].pop("conv")
        next(n for n in raw["arch"]["nodes"] if n["target"] == "conv")["target"] = evil

    return craft


def _keyword(marker: Path) -> Callable[[dict], None]:
    def craft(raw: dict) -> None:  # fx writes keywords as `key = value`
        node = _node(raw, "torch.relu")
        node["kwargs"] = {"dict": {f"x=__import__('os').system('touch {marker}'),y": 1}}

    return craft


CRAFTED = {
    "input name with code": _placeholder,
    "module name with a quote": _quoted_module,
    "keyword with code": _keyword,
    "torch.os.system": lambda m: _call("torch.os.system", m),
    "os.system": lambda m: _call("os.system", m),
    "posix.system": lambda m: _call("posix.system", m),
    "subprocess.getoutput": lambda m: _call("subprocess.getoutput", m),
    "builtins.eval": lambda m: _call("builtins.eval", m),
    "eval": lambda m: _call("eval", m),
    "exec": lambda m: _call("exec", m),
    "torch.load": lambda m: _call("torch.load", m),
    "torch.hub.load": lambda m: _call("torch.hub.load", m),
    "torch.ops.load_library": lambda m: _call("torch.ops.load_library", m),
    "torch.utils.cpp_extension.load_inline": lambda m: _call(
        "torch.utils.cpp_extension.load_inline", m
    ),
    "torch.relu.__globals__": lambda m: _call("torch.relu.__globals__", m),
    "method apply_": lambda _m: _method("apply_"),
    "method __reduce_ex__": lambda _m: _method("__reduce_ex__"),
    "method register_hook": lambda _m: _method("register_hook"),
    "getattr __class__": lambda _m: _getattr("__class__"),
    "getattr __globals__": lambda _m: _getattr("__globals__"),
    "module subprocess.Popen": lambda _m: _module_type("subprocess.Popen"),
    "module torch.nn.modules.module.os": lambda _m: _module_type("torch.nn.modules.module.os"),
    "module torch.fx.GraphModule": lambda _m: _module_type("torch.fx.graph_module.GraphModule"),
    "dtype that is a function": lambda _m: _dtype,
    "module named __class__": lambda _m: _module_path,
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_descriptions_are_refused_before_anything_runs(
    case: str, saved: dict, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    CRAFTED[case](marker)(saved)
    path = _write(tmp_path, saved)
    with pytest.raises(PrunewiseError, match="refused") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_the_cli_refuses_the_reported_checkpoint(
    saved: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: `prunewise evaluate --checkpoint crafted.pt` ran a touch command."""
    marker = tmp_path / "pwned"
    _call("torch.os.system", marker)(saved)
    path = _write(tmp_path, saved)
    code = main(["evaluate", "--checkpoint", str(path), "--dataset", "synthetic"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "calls torch.os.system, which is not an allowed operation" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_allow_lists_compare_objects_not_names() -> None:
    assert function_by_name("torch.relu") is torch.relu
    assert function_by_name("_operator.add") is operator.add
    assert function_by_name("torch.os.system") is None
    assert function_by_name("torch.nn.functional.torch.load") is None
    assert function_name(torch.load) is None and function_name(torch.save) is None
    assert function_name(getattr) == "getattr"
    assert module_type_by_name("torch.nn.modules.conv.Conv2d") is nn.Conv2d
    assert module_type_by_name("torch.nn.modules.container.Sequential") is None


@torch.fx.wrap
def _scaled(x: torch.Tensor) -> torch.Tensor:
    return x * 2


class CallsUserCode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _scaled(self.conv(x))


def test_save_refuses_what_load_would_refuse_and_allow_function_admits_it(
    tmp_path: Path,
) -> None:
    model = CallsUserCode().eval()
    with pytest.raises(PrunewiseError, match=r"node _scaled: it calls .*_scaled; a checkpoint"):
        save_checkpoint(tmp_path / "u.pt", model, input_shape=(1, 6, 6))
    assert not (tmp_path / "u.pt").exists()
    allow_function(_scaled)
    save_checkpoint(tmp_path / "u.pt", model, input_shape=(1, 6, 6))
    x = torch.randn(2, 1, 6, 6)
    assert torch.equal(load_checkpoint(tmp_path / "u.pt").model.eval()(x), model(x))


def test_a_module_with_a_forward_hook_is_refused_by_name(tmp_path: Path) -> None:
    model = Small().eval()
    model.conv.register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(
        PrunewiseError, match=r"module conv has a forward hook .* traced, saved or pruned"
    ):
        save_checkpoint(tmp_path / "h.pt", model, input_shape=(1, 8, 8))


def test_a_description_that_uses_a_node_before_defining_it_is_damaged(
    saved: dict, tmp_path: Path
) -> None:
    saved["arch"]["nodes"].reverse()
    with pytest.raises(PrunewiseError, match="before defining it"):
        load_checkpoint(_write(tmp_path, saved))


def test_traced_graphs_keep_their_operations(tmp_path: Path) -> None:
    gm = fx.symbolic_trace(Small())
    path = save_checkpoint(tmp_path / "g.pt", gm, input_shape=(1, 8, 8))
    targets = {n.target for n in load_checkpoint(path).model.graph.nodes}
    assert torch.relu in targets
