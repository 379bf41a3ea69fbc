"""Run configuration: TOML in, validation, JSON round trip, CLI layering."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunewise.cli import build_parser
from prunewise.cli.pipeline import resolve_config
from prunewise.data import DataConfig
from prunewise.errors import PrunewiseError
from prunewise.pipeline import FinetuneConfig, ModelSpec, RunConfig, load_toml, merge_options
from prunewise.pipeline.config import resolve_run_config


def test_round_trip() -> None:
    cfg = RunConfig(finetune=FinetuneConfig(epochs=3, teacher="previous"), tolerance=0.5)
    back = RunConfig.from_dict(cfg.to_dict())
    assert back == cfg
    assert cfg.to_dict()["format"] == "prunewise-run/1"


def test_a_run_stores_its_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = ModelSpec(name="models/net.py:Net", weights="w.pt")
    data = DataConfig(name="imagefolder", data_dir="images")
    cfg = RunConfig(model=model, data=data).anchored()
    assert cfg.model.name == f"{tmp_path}/models/net.py:Net"
    assert (cfg.model.weights, cfg.data.data_dir) == (f"{tmp_path}/w.pt", f"{tmp_path}/images")
    assert cfg.anchored() == cfg  # absolute paths, registered names and unset paths stay
    assert RunConfig().anchored() == RunConfig()
    baseline = RunConfig(model=ModelSpec(baseline="runs/a/baseline/model.pt")).anchored()
    assert baseline.model.baseline == f"{tmp_path}/runs/a/baseline/model.pt"


def test_unknown_key_names_known_ones() -> None:
    with pytest.raises(PrunewiseError, match=r"unknown option 'alfa' in \[policy\].*alpha"):
        RunConfig.from_dict({"policy": {"alfa": 0.3}})
    with pytest.raises(PrunewiseError, match="unknown option 'epoch' in the top level"):
        RunConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    "bad",
    [
        {"tolerance": -1},
        {"max_iterations": 0},
        {"batch_size": 0},
        {"group_experiment": -2},
        {"finetune": {"teacher": "oracle"}},
        {"finetune": {"temperature": 0}},
        {"finetune": {"weight": 1.5}},
        {"policy": {"alpha": 0}},
        {"model": {"width": -1}},
        {"train": {"device": 5}},
        {"train": {"lr": float("inf")}},
        {"train": {"nesterov": "yes"}},
        {"tolerance": True},
        {"group_experiment": 9223372036854775807},
        {"train": {"seed": 10**20}},
        {"dpu": {"board": 5}},
        {"finetune": {"temperature": float("inf")}},
        {"data": {"image_size": 100000}},
        {"train": []},
    ],
)
def test_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(PrunewiseError):
        RunConfig.from_dict(bad)


def test_toml_then_cli_override(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        "tolerance = 0.7\nmax_iterations = 3\n"
        '[policy]\nalpha = 0.3\nbeta = 0.6\n[finetune]\nepochs = 2\nteacher = "baseline"\n'
    )
    assert load_toml(path)["policy"]["alpha"] == 0.3
    args = build_parser().parse_args(["run", "--config", str(path), "--beta", "0.9"])
    cfg = resolve_config(args)
    assert (cfg.policy.alpha, cfg.policy.beta) == (0.3, 0.9)
    assert cfg.tolerance == 0.7 and cfg.max_iterations == 3
    assert cfg.finetune == FinetuneConfig(epochs=2, teacher="baseline")
    assert cfg.model == ModelSpec()


def test_scheme_and_model_width_rules() -> None:
    args = build_parser().parse_args(["run", "--scheme", "2", "--model", "resnet20"])
    cfg = resolve_config(args)
    assert (cfg.policy.alpha, cfg.policy.beta) == (1.0, 1.0)
    assert cfg.model.width is None  # a changed model drops the default model's width
    args = build_parser().parse_args(["run", "--scheme", "2", "--alpha", "0.4"])
    assert resolve_config(args).policy.alpha == 0.4


def test_bad_toml(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("tolerance = [")
    with pytest.raises(PrunewiseError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(PrunewiseError, match="does not exist"):
        load_toml(tmp_path / "none.toml")


def test_merge_options() -> None:
    merged = merge_options({"a": 1, "s": {"x": 1, "y": 2}}, {"s": {"y": 3}, "b": None})
    assert merged == {"a": 1, "s": {"x": 1, "y": 3}}


def test_dpu_section_and_round_to_by_board(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[policy]\nround_to = "zcu104"\n[dpu]\nboard = "zcu104"\nthreads = [1, 4]\n')
    args = build_parser().parse_args(["run", "--config", str(path), "--dpu-threads", "1,2,3"])
    cfg = resolve_config(args)
    assert cfg.policy.round_to == 16  # B4096: 16 input and output channels per clock
    assert cfg.dpu.board == "zcu104" and cfg.dpu.threads == (1, 2, 3)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    args = build_parser().parse_args(["run", "--round-to", "B1024", "--no-dpu"])
    cfg = resolve_config(args)
    assert cfg.policy.round_to == 8 and not cfg.dpu.enabled
    for bad, message in (
        ({"dpu": {"threads": [0]}}, "dpu.threads (--dpu-threads) must be a non-empty list of"),
        ({"policy": {"round_to": "kv999"}}, "round_to must be an integer >= 1, a DPU size"),
    ):
        with pytest.raises(PrunewiseError, match=None) as err:
            RunConfig.from_dict(bad)
        assert message in str(err.value)
    # the board is looked up when a run starts (a config reads no file)
    with pytest.raises(PrunewiseError, match="unknown board 'zcu1'"):
        RunConfig.from_dict({"dpu": {"board": "zcu1"}}).dpu.resolve()


def test_the_documented_run_toml_is_the_default(tmp_path) -> None:
    """docs/run.md shows every [section] with its default: loading it changes nothing."""
    text = (Path(__file__).parents[2] / "docs" / "run.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "run.toml"
    path.write_text(block)
    documented = resolve_config(build_parser().parse_args(["run", "--config", str(path)]))
    assert documented == resolve_config(build_parser().parse_args(["run"]))
    assert 'importance = "bn-gamma"' in block


def test_image_size_has_a_flag() -> None:
    """Weights trained on 28 x 28 Fashion-MNIST need the images at that size."""
    cfg = resolve_config(build_parser().parse_args(["run", "--image-size", "28"]))
    assert cfg.data.image_size == 28
    assert resolve_config(build_parser().parse_args(["run"])).data.image_size is None


def test_a_bad_file_value_is_refused_even_where_the_command_line_overrides_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[train]\nlr = "abc"\n')
    with pytest.raises(PrunewiseError, match=r"train.lr \(--lr\) must be a number .* got 'abc'"):
        resolve_run_config(path, {"train.lr": 0.1})
    path.write_text("[train]\nlr = 0.2\n")
    assert resolve_run_config(path, {"train.lr": 0.1}).train.lr == 0.1
    path.write_text('task = "segmentation"\n')  # fits only with the command line's dataset
    given = {"data.name": "imagefolder", "data.data_dir": str(tmp_path)}
    assert resolve_run_config(path, given).task == "segmentation"


def test_power_of_two_given_to_a_run_picks_its_own_weight_bits(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("[deploy.int8]\npower_of_two = true\n")
    for config in (
        resolve_run_config(toml, {}),
        resolve_run_config(None, {"deploy.int8.power_of_two": True}),
    ):
        assert config.deploy.int8.weight_bits is None and config.deploy.int8.bits == 8
    assert resolve_run_config(None, {}).deploy.int8.bits == 7
    given = {"deploy.int8.power_of_two": True, "deploy.int8.weight_bits": 6}
    assert resolve_run_config(None, given).deploy.int8.bits == 6


def test_a_toml_file_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PrunewiseError, match="is not valid TOML"):
        load_toml(deep)
