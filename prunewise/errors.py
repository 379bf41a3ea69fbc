"""The one exception type that reaches users as a one-line message, and how it lists names."""

from __future__ import annotations

import signal
from collections.abc import Sequence

__all__ = ["PrunewiseError", "Stopped", "first_line", "listing", "printable"]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): how a
    message quotes the error of a library it wraps."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def listing(names: Sequence[object], shown: int) -> str:
    """The first `shown` of `names` joined by commas, with ', ...' when there are more: how a
    message lists keys, classes or modules without running on for a line."""
    return ", ".join(str(n) for n in names[:shown]) + (", ..." if len(names) > shown else "")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (escape codes, carriage returns,
    right-to-left overrides) written as its Python escape: how names read from a file reach
    the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PrunewiseError(Exception):
    """A problem with the user's input or environment, phrased as what is wrong and how to fix it.

    The CLI prints it as one line and exits with status 2; library callers can catch it.
    """


class Stopped(KeyboardInterrupt):
    """A job stopped by a signal (SIGTERM from `timeout`, `docker stop`, a batch scheduler):
    handled as Ctrl-C is (failed.json, --resume continues it); the CLI exits with status
    128 + `signum`, as a process killed by that signal would."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum
