"""Every command-line option that a config field declares takes its default from that field:
an option's default is stated once, in the dataclass (issue 16)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil

import prunewise
from prunewise.cli import build_parser
from prunewise.settings import Settings


def _settings_classes() -> set[type]:
    for info in pkgutil.walk_packages(prunewise.__path__, "prunewise."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found, todo = set(), [Settings]
    while todo:
        for cls in todo.pop().__subclasses__():
            found.add(cls)
            todo.append(cls)
    return found


def _declared() -> dict[str, list[object]]:
    """flag -> the defaults of the fields that declare it."""
    out: dict[str, list[object]] = {}
    for cls in _settings_classes():
        for f in dataclasses.fields(cls):
            spec = f.metadata.get("spec")
            if spec is not None and spec.flag:
                out.setdefault(spec.flag, []).append(f.default)
    return out


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_declared_option_defaults_to_its_field() -> None:
    declared = _declared()
    checked, wrong = 0, []
    for name, parser in _commands().items():
        for action in parser._actions:
            for flag in (f for f in action.option_strings if f in declared):
                checked += 1
                if action.default is argparse.SUPPRESS or action.default is None:
                    continue  # only given options override (the config or checkpoint decides)
                ok = action.default in declared[flag]  # a --no-X flag stores False, defaults True
                if not ok:
                    wrong.append(f"{name} {flag}: {action.default!r} vs {declared[flag]}")
    assert checked > 150  # the run's options and the step commands' shared ones
    assert not wrong, wrong


def test_no_option_shows_a_dotted_metavar() -> None:
    for name, parser in _commands().items():
        for action in parser._actions:
            metavar = action.metavar if isinstance(action.metavar, str) else ""
            assert "." not in metavar, f"{name} {action.option_strings}: {metavar}"
