"""`--help` works on the top-level command and on every registered sub-command."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys

import pytest

from prunewise.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    """Every registered sub-command's parser, by name (new commands are picked up here)."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the prunewise parser has no sub-commands")


SUBCOMMANDS = sorted(_subparsers())


def _help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `prunewise ARGV` (ending in --help); assert it exits 0 and return stdout."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_the_core_commands_are_registered() -> None:
    assert {"models", "train", "evaluate", "analyze", "prune"} <= set(SUBCOMMANDS)


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help_of(["--help"], capsys)
    assert out.startswith("usage: prunewise")
    assert "--version" in out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_describes_every_option(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _help_of([name, "--help"], capsys)
    assert out.startswith(f"usage: prunewise {name}")
    options = [a for a in _subparsers()[name]._actions if a.option_strings and a.dest != "help"]
    for action in options:
        for flag in action.option_strings:
            assert flag in out, f"{name} --help does not mention {flag}"
        assert action.help, f"{name} {action.option_strings[0]} has no help text"


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("train", ["--model", "--width", "--dataset", "--data-dir", "--epochs", "--limit"]),
        ("evaluate", ["--checkpoint", "--dataset", "--batch-size", "--limit"]),
        ("analyze", ["--checkpoint", "--model", "--alpha", "--beta", "--scheme", "--images"]),
        ("prune", ["--checkpoint", "--plan", "--out", "--evaluate", "--alpha", "--round-to"]),
        ("models", ["--source"]),
    ],
)
def test_main_options_are_in_the_help(
    name: str, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = _help_of([name, "--help"], capsys)
    for flag in flags:
        assert flag in out


HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "scipy", "matplotlib")


def _loaded_after(code: str) -> tuple[str, list[str]]:
    """(stdout, the HEAVY modules loaded) of `code` run in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint('LOADED', [m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out, _, loaded = done.stdout.rpartition("LOADED ")
    return out, ast.literal_eval(loaded)


def test_top_level_help_imports_nothing_heavy() -> None:
    """`prunewise --help` lists the commands from the index alone: no torch, no ONNX, no scipy;
    `run` (the flagship) comes first."""
    out, loaded = _loaded_after(
        "import runpy\nsys.argv = ['prunewise', '--help']\n"
        "try:\n    runpy.run_module('prunewise', run_name='__main__')\n"
        "except SystemExit:\n    pass"
    )
    assert loaded == []
    assert out.split("positional arguments:")[1].split()[1] == "run"


def test_a_command_imports_its_module_only_when_chosen() -> None:
    _, loaded = _loaded_after("from prunewise.cli import build_parser\nbuild_parser(['models'])")
    assert not {"onnx", "onnxruntime", "scipy"} & set(loaded)


def test_the_cli_stays_a_thin_layer() -> None:
    """The commands are adapters over library verbs (issue 16: at most half of the 1,580
    lines cli/ had when the issue was filed)."""
    from pathlib import Path

    import prunewise.cli

    package = Path(prunewise.cli.__file__).parent
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in package.glob("*.py"))
    assert lines <= 790, lines
