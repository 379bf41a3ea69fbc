"""`--help` works on the top-level command and on every registered sub-command."""

from __future__ import annotations

import argparse
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


def test_top_level_help_imports_nothing_heavy() -> None:
    """`prunewise --help` lists the commands from the index alone: no torch, no ONNX, no scipy;
    `run` (the flagship) comes first."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['prunewise', '--help']\n"
        "try:\n"
        "    runpy.run_module('prunewise', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('torch', 'torchvision', 'onnx', 'onnxruntime', 'scipy', 'matplotlib')\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    listing = done.stdout.split("positional arguments:")[1]
    assert listing.split()[1] == "run"


def test_a_command_imports_its_module_only_when_chosen() -> None:
    code = (
        "import sys\n"
        "from prunewise.cli import build_parser\n"
        "build_parser(['models'])\n"
        "print('LOADED', [m for m in ('onnx', 'onnxruntime', 'scipy') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
