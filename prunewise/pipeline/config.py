"""The resolved configuration of a `prunewise run`: nested frozen dataclasses, TOML in, JSON out."""

from __future__ import annotations

import copy
import dataclasses
import json
import operator
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from prunewise.data import DataConfig
from prunewise.errors import PrunewiseError
from prunewise.export import DeployConfig
from prunewise.hw.dpu.config import DPUConfig, resolve_round_to
from prunewise.io import overlay, read_json
from prunewise.models.registry import MAX_WIDTH
from prunewise.models.sources import parse_model_args, parse_source
from prunewise.prune import RefinedConfig
from prunewise.records import LOOP_FORMAT, RUN_FORMAT
from prunewise.settings import Settings, nested, same_as, setting
from prunewise.train import DistillConfig, TrainConfig

__all__ = [
    "RUN_FORMAT",
    "TASKS",
    "TEACHERS",
    "FinetuneConfig",
    "ModelSpec",
    "RunConfig",
    "build_settings",
    "load_toml",
    "merge_options",
    "read_run_config",
    "resolve_run_config",
    "run_default",
    "run_options",
]

TEACHERS = ("none", "baseline", "previous")
TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class ModelSpec(Settings):
    """Which model: a source (a registered name, `torchvision:NAME`, `timm:NAME`,
    `net.py:Net`, `package.module:factory`) with its builder's keyword arguments and optional
    trained weights, or a trained prunewise baseline checkpoint.

    Whether files exist and load is checked when a run starts (before it writes anything), not
    here, so a run's config can be read after a file has moved.
    """

    section: ClassVar[str] = "model"

    name: str = setting(
        "vgg13_bn_small",
        "model: a registered name (`prunewise models`), torchvision:NAME, timm:NAME, "
        "path/to/net.py:factory or package.module:factory",
        flag="--model",
        metavar="SOURCE",
    )
    width: float | None = setting(
        0.25,
        "width multiplier of prunewise models (unset: the model's own)",
        kind="float",
        optional=True,
        low=0,
        high=MAX_WIDTH,
        low_open=True,
        flag="--width",
    )
    args: str | None = setting(
        None,
        "keyword arguments of the model's builder",
        kind="str",
        pattern_text="a JSON object, in TOML a [model.args] table",
        flag="--model-args",
        metavar="JSON",
    )
    weights: str | None = setting(
        None,
        "trained weights for --model (a state dict, a training checkpoint, a pickled model or "
        "a .safetensors file; docs/your-model.md), read without running code; they are the "
        "baseline",
        kind="str",
        flag="--weights",
        metavar="FILE",
    )
    new_head: bool = setting(
        False,
        "with --weights trained for other classes (ImageNet's 1000): load all but the "
        "classifier head and build the head for the data's classes, trained from there "
        "(run: the baseline's --epochs)",
        flag="--new-head",
    )
    trust_pickle: bool = setting(
        False,
        "unpickle --weights when its tensors cannot be read without building its classes "
        "(runs code from the file; rarely needed: whole pickled models are read without it)",
        flag="--trust-pickle",
    )
    baseline: str | None = setting(
        None,
        "start from this trained prunewise checkpoint instead of training a baseline",
        kind="str",
        flag="--baseline",
        metavar="CKPT",
    )

    def check(self) -> None:
        """The builder's arguments are a JSON object; --weights and --baseline both give the
        baseline, so at most one of them."""
        parse_model_args(self.args)
        if self.weights is not None and self.baseline is not None:
            self.fail("weights", "unset when baseline is set (give one of them)", self.weights)
        if self.baseline is not None:  # the checkpoint holds the model: these would be ignored
            values = ((f.name, getattr(self, f.name), f.default) for f in fields(self))
            self.refuse_builds({name: v for name, v, default in values if v != default})

    def refuse_builds(self, given: Mapping[str, Any]) -> None:
        """Raise PrunewiseError for the first option of `given` (name -> value) that builds a
        model or reads its weights: beside a baseline checkpoint it would be ignored."""
        for key in _BUILDS:
            if key in given:
                self.fail(key, "unset with --baseline (its checkpoint is the model)", given[key])


_BUILDS = ("name", "width", "args", "new_head", "trust_pickle")
"""The model options that build a model or read its weights: a --baseline checkpoint needs none."""


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """Fine-tuning after each pruning step: epochs and optional distillation."""

    section: ClassVar[str] = "finetune"

    epochs: int = setting(
        1,
        "fine-tune epochs per iteration (paper A: 50)",
        low=0,
        high=100_000,
        flag="--finetune-epochs",
    )
    teacher: str = setting(
        "none", "fine-tune with distillation from this teacher", choices=TEACHERS, flag="--distill"
    )
    temperature: float = same_as(DistillConfig, "temperature")
    weight: float = same_as(DistillConfig, "weight")

    @property
    def distill(self) -> bool:
        """Whether fine-tuning distils from a teacher."""
        return self.teacher != "none"


@dataclass(frozen=True)
class RunConfig(Settings):
    """Everything `prunewise run` needs; `config.json` in the run folder holds it resolved."""

    model: ModelSpec = nested(ModelSpec)
    data: DataConfig = nested(DataConfig)
    policy: RefinedConfig = nested(RefinedConfig)
    train: TrainConfig = nested(lambda: TrainConfig(epochs=3))
    finetune: FinetuneConfig = nested(FinetuneConfig)
    deploy: DeployConfig = nested(DeployConfig)
    dpu: DPUConfig = nested(DPUConfig)
    task: str = setting(
        "classification",
        "what the model does: classification (scored by top-1 accuracy) or segmentation "
        "(mIoU; --dataset imagefolder whose train/ and val/ hold images/ and masks/)",
        choices=TASKS,
        flag="--task",
    )
    batch_size: int = setting(
        128, "batch size (paper A: 20)", low=1, high=65536, flag="--batch-size"
    )
    tolerance: float = setting(
        1.5,
        "stop when validation accuracy falls more than this many points below the baseline",
        low=0,
        high=100,
        flag="--tolerance",
    )
    max_iterations: int = setting(
        6, "most pruning iterations", low=1, high=1000, flag="--max-iterations"
    )
    analysis_images: int = setting(
        100,
        "images to measure input sparsity on (1 = the paper)",
        low=1,
        high=1_000_000,
        flag="--images",
        metavar="N",
    )
    group_experiment: int = setting(
        50,
        "groups of paper A's fig. 20 experiment (0 = skip)",
        low=0,
        high=1000,
        flag="--group-experiment",
        metavar="G",
    )

    def check(self) -> None:
        """Segmentation reads a folder of images and masks."""
        if self.task == "segmentation" and self.data.name != "imagefolder":
            self.fail(
                "task",
                "classification for the data "
                f"{self.data.name} (segmentation reads --dataset imagefolder)",
                self.task,
            )

    def anchored(self) -> RunConfig:
        """This config with its relative file paths (a model file's, --weights, --baseline,
        --data-dir) made absolute from the working folder, as a run folder stores them, so a
        run resumes from any folder."""
        model, data = self.model, self.data
        source = parse_source(model.name)
        if source.kind == "file":
            name = str(dataclasses.replace(source, name=str(Path(source.name).absolute())))
            model = dataclasses.replace(model, name=name)
        for key in ("weights", "baseline"):
            if getattr(model, key) is not None:
                model = dataclasses.replace(model, **{key: _absolute(getattr(model, key))})
        if data.data_dir is not None:
            data = dataclasses.replace(data, data_dir=_absolute(data.data_dir))
        return dataclasses.replace(self, model=model, data=data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the format marker."""
        return {"format": RUN_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Inverse of `to_dict`; unknown keys are errors that list the known ones."""
        if not isinstance(data, dict):
            raise PrunewiseError(
                f"a run configuration is a table of options, got {type(data).__name__}"
            )
        found = data.get("format", RUN_FORMAT)
        if found == LOOP_FORMAT:
            raise PrunewiseError(
                "it is the configuration of a prune_iteratively job (Python), not of a "
                "`prunewise run`; continue that with prune_iteratively(..., resume=True)"
            )
        if found != RUN_FORMAT:
            raise PrunewiseError(f"a run configuration of format {found!r}, not {RUN_FORMAT!r}")
        return build_settings(cls, {k: v for k, v in data.items() if k != "format"})


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _file_value(path: str, value: Any) -> Any:
    """A run file's value of setting `path` as the config takes it: round_to may name a DPU
    size or board (its channel parallelism)."""
    if path == "policy.round_to" and isinstance(value, str):
        return resolve_round_to(value)
    return value


def build_settings(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """A config of class `cls` (nested tables become nested configs) from a JSON or TOML
    dict; an unknown key is an error that lists the known ones."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise PrunewiseError(
            f"unknown option {unknown[0]!r} in {place} of the run config; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if known[key].metadata.get("nested"):
            if not isinstance(value, dict):
                raise PrunewiseError(f"[{path}] of the run config must be a table, got {value!r}")
            value = build_settings(type(known[key].default_factory()), value, path)
        else:
            value = _file_value(path, value)
        kwargs[key] = value
    return cls(**kwargs)


_WRITTEN = ("format", "model", "data", "policy")
"""What every config.json holds (`to_dict` writes them all): one without them is damaged, not
a run of the defaults."""


def read_run_config(path: str | Path) -> RunConfig:
    """The RunConfig of a run folder's config.json; a damaged file is a one-line error."""
    try:
        data = read_json(path)
        missing = [k for k in _WRITTEN if k not in data] if isinstance(data, dict) else []
        if missing:
            raise PrunewiseError(f"it has no {missing[0]!r} (damaged: every run writes it)")
        return RunConfig.from_dict(data)
    except PrunewiseError as exc:
        raise PrunewiseError(f"{path} is not a valid run configuration: {exc}") from exc


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML run config into a nested dict (sections model, data, policy, ...)."""
    path = Path(path)
    if not path.is_file():
        raise PrunewiseError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PrunewiseError(f"config file {path} is not valid TOML: {exc}") from exc
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("args"), dict):
        model["args"] = json.dumps(model["args"], sort_keys=True)  # [model.args]: a table
    return data


def merge_options(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge nested option dicts; later layers win, None values are skipped."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            if isinstance(value, dict):
                out[key] = merge_options(out.get(key, {}), value)
            else:
                out[key] = value
    return out


def run_default(dotted: str) -> Any:
    """The default of a run setting by its dotted name ('train.epochs': 3, RunConfig's own,
    not TrainConfig's 2)."""
    return operator.attrgetter(dotted)(RunConfig())


def run_options(cls: type = RunConfig, where: str = "") -> list[tuple[str, type, str]]:
    """(dotted name 'section.field', config class, field) of every run setting with a
    command-line flag, in declaration order."""
    out: list[tuple[str, type, str]] = []
    for f in fields(cls):
        dest = f"{where}.{f.name}" if where else f.name
        if f.metadata.get("nested"):
            out += run_options(type(f.default_factory()), dest)  # type: ignore[misc]
        elif "spec" in f.metadata and f.metadata["spec"].flag:
            out.append((dest, cls, f.name))
    return out


def _refuse_builds_beside_baseline(*sources: dict[str, Any]) -> None:
    """Refuse a model option given (in the file or on the command line, even at its default
    value) beside a baseline checkpoint, which is the model: it would be ignored."""
    tables = [s.get("model") if isinstance(s.get("model"), dict) else {} for s in sources]
    if not any(t.get("baseline") for t in tables):
        return
    for table in tables:
        ModelSpec().refuse_builds(table)


def resolve_run_config(
    toml: str | Path | None, given: dict[str, Any], scheme: int | None = None
) -> RunConfig:
    """The run's configuration: defaults < the TOML file < `given` (dotted names, e.g. from
    the command line: {"train.lr": 0.05}). `scheme` (1 or 2) presets alpha and beta (paper A)
    unless given; a model named without a width drops the default width."""
    nested_given: dict[str, Any] = {}
    for dotted, value in given.items():
        *sections, key = dotted.split(".")
        table = nested_given
        for section in sections:
            table = table.setdefault(section, {})
        table[key] = value
    if scheme is not None:
        preset = RefinedConfig.scheme(scheme)
        policy = nested_given.setdefault("policy", {})
        policy.setdefault("alpha", preset.alpha)
        policy.setdefault("beta", preset.beta)
    defaults = {k: v for k, v in RunConfig().to_dict().items() if k != "format"}

    def made(options: dict[str, Any]) -> RunConfig:
        model = options.get("model", {})
        if "name" in model and "width" not in model:
            model["width"] = None
        return RunConfig.from_dict(overlay(defaults, options))

    written = load_toml(toml) if toml else {}
    _refuse_builds_beside_baseline(written, nested_given)
    for section, key in _overridden(written, nested_given):  # the file's value is checked too
        given_here = copy.deepcopy(nested_given)
        (given_here.get(section, {}) if section else given_here).pop(key)
        made(merge_options(copy.deepcopy(written), given_here))
    return made(merge_options(written, nested_given))


def _overridden(written: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, str]]:
    """(section, key) of the values a run file sets and the command line overrides ("" for
    the top level); sections one level deep, as the command line's options are."""
    found = []
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(written.get(key), dict):
            found += [(key, k) for k in value if k in written[key]]
        elif not isinstance(value, dict) and key in written:
            found.append(("", key))
    return found
