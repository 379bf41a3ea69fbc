"""prunewise.settings: declarations make the command line (flags, help, required options)
and configs come back from the parsed options, checked."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from prunewise.errors import PrunewiseError
from prunewise.settings import (
    REQUIRED,
    Settings,
    add_settings,
    help_text,
    setting,
    settings_from_args,
)


@dataclass(frozen=True)
class _Demo(Settings):
    section: ClassVar[str] = "demo"

    path: str = setting(REQUIRED, "where the file is", kind="str", flag="--path")
    size: int = setting(4, "how many", low=1, high=8, flag="--size")
    mode: str = setting("a", "which mode", choices=("a", "b"), flag="--mode")
    note: str | None = setting(None, "free text", kind="str", flag="--note")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_settings(p, _Demo, ("path", "size", "mode", "note"), title="demo", required=("path",))
    return p


def test_flags_come_back_as_a_checked_config() -> None:
    args = _parser().parse_args(["--path", "x.pt", "--size", "8", "--mode", "b"])
    assert settings_from_args(_Demo, args) == _Demo(path="x.pt", size=8, mode="b")
    assert settings_from_args(_Demo, args, note="n").note == "n"  # extra fields
    bad = _parser().parse_args(["--path", "x.pt", "--size", "9"])
    with pytest.raises(PrunewiseError, match=r"demo.size \(--size\) must be an integer in"):
        settings_from_args(_Demo, bad)


def test_a_required_option_is_required() -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parser().parse_args(["--size", "2"])


def test_help_says_what_is_accepted_except_for_free_text() -> None:
    assert help_text(_Demo, "size") == "how many (an integer in [1, 8]; default 4)"
    assert help_text(_Demo, "mode") == "which mode (one of a, b; default a)"
    assert help_text(_Demo, "note") == "free text (default unset)"
    assert help_text(_Demo, "path") == "where the file is (required)"


def test_a_verb_given_a_dict_for_its_config_says_how_to_make_one() -> None:
    from prunewise.prune import RefinedConfig

    assert RefinedConfig.given(None) == RefinedConfig()
    config = RefinedConfig()
    assert RefinedConfig.given(config) is config
    with pytest.raises(
        PrunewiseError, match=r"must be a RefinedConfig, got dict.*RefinedConfig\(\*\*"
    ):
        RefinedConfig.given({"alpha": 1.0})


def test_numpy_numbers_are_numbers_and_come_back_as_python_ones() -> None:
    from prunewise.prune import RefinedConfig

    cfg = RefinedConfig(alpha=np.float32(0.25), min_channels=np.int64(2))
    assert (cfg.alpha, cfg.min_channels) == (0.25, 2)
    assert type(cfg.alpha) is float and type(cfg.min_channels) is int
    for bad in (np.bool_(True), np.float64("nan"), "0.3"):
        with pytest.raises(PrunewiseError, match=r"alpha \(--alpha\) must be a number in"):
            RefinedConfig(alpha=bad)
