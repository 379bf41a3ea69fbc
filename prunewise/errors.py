"""The one exception type that reaches users as a one-line message."""

from __future__ import annotations

__all__ = ["PrunewiseError"]


class PrunewiseError(Exception):
    """A problem with the user's input or environment, phrased as what is wrong and how to fix it.

    The CLI prints it as one line and exits with status 2; library callers can catch it.
    """
