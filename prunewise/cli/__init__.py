"""The `prunewise` command: one entry point, a sub-command per stage.

The commands are listed from `prunewise.cli.index` alone; the module of a command (and torch,
ONNX Runtime, ... with it) is imported only when that command is parsed, so
`prunewise --help` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from prunewise import __version__
from prunewise.cli.index import INDEX, Command
from prunewise.errors import PrunewiseError, printable

__all__ = ["build_parser", "command", "main"]


def command(name: str) -> Command:
    """(add arguments, run) of the sub-command `name`, importing its module."""
    return importlib.import_module(INDEX[name][1]).COMMANDS[name]


def _chosen(argv: Sequence[str]) -> str | None:
    """The sub-command argv names (its first word that is not an option), if any."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in INDEX else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every sub-command listed; the arguments of the one `argv` names,
    or of every one when `argv` is None."""
    strict: dict[str, Any] = {"exit_on_error": False, "allow_abbrev": False}  # no --dev: --devices
    about = "Turn a trained CNN into a smaller, faster, deployable one."
    parser = argparse.ArgumentParser(prog="prunewise", description=about, **strict)
    parser.add_argument("--version", action="version", version=f"prunewise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = set(INDEX) if argv is None else {_chosen(argv)}
    for name, (help_text, _module) in INDEX.items():
        p = sub.add_parser(name, help=help_text, description=help_text, **strict)
        if name in wanted:
            command(name)[0](p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # a value of the wrong type is one line, like every other user error
        args = build_parser(argv).parse_args(argv)
    except argparse.ArgumentError as exc:
        print(f"prunewise: error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(command(args.command)[1](args) or 0)
    except PrunewiseError as exc:
        print(f"prunewise: error: {printable(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2
    except OSError as exc:  # files the commands read or write outside prunewise.io
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"prunewise: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        job = " (the job goes on: --resume)" if args.command in ("run", "sparsify") else ""
        print(f"prunewise: interrupted{job}", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)  # 130 for Ctrl-C (SIGINT), 143 for SIGTERM


if __name__ == "__main__":
    sys.exit(main())
