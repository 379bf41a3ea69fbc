"""Options shared by the one-step commands, made from the configs that declare them."""

from __future__ import annotations

import argparse
from dataclasses import fields

from prunewise.errors import PrunewiseError
from prunewise.hw.dpu.config import resolve_round_to
from prunewise.pipeline.config import RunConfig
from prunewise.pipeline.inputs import InputsConfig, Loaded, load_inputs
from prunewise.prune import RefinedConfig
from prunewise.settings import add_setting, add_settings, settings_from_args

__all__ = [
    "SCHEME_HELP",
    "add_inputs_args",
    "add_policy_args",
    "load",
    "policy_config",
    "round_to_arg",
]

_MODEL = ("checkpoint", "model", "width", "model_args", "model_weights", "model_trust_pickle")
_DATA = ("dataset", "data_dir", "batch_size", "seed", "input_size", "limit")
SCHEME_HELP = "paper A preset: 1 = alpha=beta=0.5 (default), 2 = alpha=beta=1"


def add_inputs_args(
    p: argparse.ArgumentParser,
    *,
    checkpoint_only: bool = False,
    scope: bool = False,
    task: bool = False,
    trains: bool = False,
) -> None:
    """The model options (only --checkpoint with `checkpoint_only`; --scope with `scope`;
    --new-head for a command that `trains`), the device and the data options of
    `InputsConfig` (--task with `task`)."""
    model = ("checkpoint",) if checkpoint_only else (*_MODEL, *("model_new_head",) * trains)
    names = (*model, *(("model_scope",) if scope else ()), "device")
    required = ("checkpoint",) if checkpoint_only else ()
    add_settings(p, InputsConfig, names, title="model", required=required)
    add_settings(p, InputsConfig, (*_DATA, *(("task",) if task else ())), title="data")


def load(args: argparse.Namespace, **options: bool) -> tuple[InputsConfig, Loaded]:
    """The command's `InputsConfig` and what it loads (`load_inputs` with `options`)."""
    config = settings_from_args(InputsConfig, args)
    out = getattr(args, "out", None)
    return config, load_inputs(config, offer_scope="model_scope" in args, out=out, **options)


def round_to_arg(text: str) -> int:
    """--round-to: an integer, or a DPU size or board name (its channel parallelism)."""
    try:
        return resolve_round_to(text)
    except PrunewiseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """--scheme, the options of the refined policy (eq. 4) and the sparsity images."""
    g = p.add_argument_group("refined pruning policy, paper A eq. 4")
    g.add_argument("--scheme", type=int, choices=(1, 2), default=None, help=SCHEME_HELP)
    for f in fields(RefinedConfig):
        parse = round_to_arg if f.name == "round_to" else None
        suppress = f.name in ("alpha", "beta")
        add_setting(g, RefinedConfig, f.name, suppress=suppress, parse=parse)
    add_setting(g, RunConfig, "analysis_images", dest="images")


def policy_config(args: argparse.Namespace) -> RefinedConfig:
    """RefinedConfig from the policy options (scheme preset, then explicit alpha/beta)."""
    preset = RefinedConfig.scheme(args.scheme or 1)
    given = {f.name: getattr(args, f.name) for f in fields(RefinedConfig) if f.name in args}
    return RefinedConfig(**{"alpha": preset.alpha, "beta": preset.beta, **given})
