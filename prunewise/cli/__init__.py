"""The `prunewise` command: one entry point, a sub-command per stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prunewise import __version__
from prunewise.cli.commands import COMMANDS as _STEP_COMMANDS
from prunewise.cli.deploy import DEPLOY_COMMANDS
from prunewise.cli.dpu import DPU_COMMANDS
from prunewise.cli.pipeline import PIPELINE_COMMANDS
from prunewise.cli.sparsify import SPARSIFY_COMMANDS
from prunewise.errors import PrunewiseError

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = {
    **_STEP_COMMANDS,
    **SPARSIFY_COMMANDS,
    **DEPLOY_COMMANDS,
    **DPU_COMMANDS,
    **PIPELINE_COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="prunewise",
        description="Turn a trained CNN into a smaller, faster, deployable one.",
    )
    parser.add_argument("--version", action="version", version=f"prunewise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_args, _run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command][2](args) or 0)
    except PrunewiseError as exc:
        print(f"prunewise: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:  # files the commands read or write outside prunewise.io
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"prunewise: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunewise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
