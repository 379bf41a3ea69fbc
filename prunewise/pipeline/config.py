"""The resolved configuration of a `prunewise run`: nested frozen dataclasses, TOML in, JSON out."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prunewise.data import DataConfig
from prunewise.errors import PrunewiseError
from prunewise.export import DeployConfig, LatencyConfig
from prunewise.hw.dpu.config import DPUConfig, resolve_round_to
from prunewise.prune import RefinedConfig
from prunewise.quant import Int8Config
from prunewise.train import TrainConfig

__all__ = [
    "RUN_FORMAT",
    "TEACHERS",
    "FinetuneConfig",
    "ModelSpec",
    "RunConfig",
    "load_toml",
    "merge_options",
]

RUN_FORMAT = "prunewise-run/1"
TEACHERS = ("none", "baseline", "previous")


@dataclass(frozen=True)
class ModelSpec:
    """Which model: a registered name (and width), or a trained baseline checkpoint."""

    name: str = "vgg13_bn_small"
    width: float | None = 0.25
    baseline: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PrunewiseError(f"model.name must be a model name, got {self.name!r}")
        if self.width is not None and not (
            isinstance(self.width, int | float) and 0 < self.width <= 4
        ):
            raise PrunewiseError(f"model.width must be in (0, 4] or unset, got {self.width!r}")
        if self.baseline is not None and not Path(self.baseline).is_file():
            raise PrunewiseError(
                f"baseline checkpoint {self.baseline} does not exist; "
                "pass a file written by `prunewise train` or drop --baseline to train one"
            )


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning after each pruning step: epochs and optional distillation."""

    epochs: int = 1
    teacher: str = "none"
    temperature: float = 4.0
    weight: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise PrunewiseError(f"finetune.epochs must be an integer >= 0, got {self.epochs!r}")
        if self.teacher not in TEACHERS:
            raise PrunewiseError(
                f"finetune.teacher must be one of {', '.join(TEACHERS)}, got {self.teacher!r}"
            )
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            raise PrunewiseError(f"finetune.temperature must be > 0, got {self.temperature!r}")
        if not (isinstance(self.weight, int | float) and 0 <= self.weight <= 1):
            raise PrunewiseError(f"finetune.weight must be in [0, 1], got {self.weight!r}")

    @property
    def distill(self) -> bool:
        """Whether fine-tuning distils from a teacher."""
        return self.teacher != "none"


@dataclass(frozen=True)
class RunConfig:
    """Everything `prunewise run` needs; `config.json` in the run folder holds it resolved."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    policy: RefinedConfig = field(default_factory=RefinedConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    dpu: DPUConfig = field(default_factory=DPUConfig)
    batch_size: int = 128
    tolerance: float = 1.5
    max_iterations: int = 6
    analysis_images: int = 100
    group_experiment: int = 50

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("max_iterations", 1), ("analysis_images", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise PrunewiseError(f"{name} must be an integer >= {low}, got {v!r}")
        g = self.group_experiment
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise PrunewiseError(f"group_experiment must be an integer >= 0 (0 = skip), got {g!r}")
        if not (isinstance(self.tolerance, int | float) and self.tolerance >= 0):
            raise PrunewiseError(f"tolerance must be >= 0 accuracy points, got {self.tolerance!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the format marker."""
        return {"format": RUN_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of `to_dict`; unknown keys are errors that list the known ones."""
        data = {k: v for k, v in data.items() if k != "format"}
        return _build(cls, data, "")


_SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "data": DataConfig,
    "policy": RefinedConfig,
    "train": TrainConfig,
    "finetune": FinetuneConfig,
    "deploy": DeployConfig,
    "deploy.int8": Int8Config,
    "deploy.latency": LatencyConfig,
    "dpu": DPUConfig,
}


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise PrunewiseError(
            f"unknown option {unknown[0]!r} in {place} of the run config; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        sub = _SECTIONS.get(path)
        if sub is not None:
            if not isinstance(value, dict):
                raise PrunewiseError(f"[{path}] of the run config must be a table, got {value!r}")
            value = _build(sub, value, path)
        elif path == "policy.round_to":  # a DPU size or board name: its channel parallelism
            value = resolve_round_to(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise PrunewiseError(f"bad run config{f' [{where}]' if where else ''}: {exc}") from exc


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML run config into a nested dict (sections model, data, policy, ...)."""
    path = Path(path)
    if not path.is_file():
        raise PrunewiseError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PrunewiseError(f"config file {path} is not valid TOML: {exc}") from exc


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
