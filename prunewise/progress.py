"""Progress bars: tqdm's, drawn on a terminal only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool, **options: Any) -> tqdm:
    """A tqdm bar over `iterable` with tqdm's `options`, drawn when `show` and stderr is a
    terminal: output piped or redirected to a file gets no carriage-return updates."""
    return tqdm(iterable, disable=None if show else True, **options)
