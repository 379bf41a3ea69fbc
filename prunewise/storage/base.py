"""The interface every index format implements, and where its value slots go."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from prunewise.storage.bits import BitReader, BitWriter
from prunewise.storage.spec import Spec

__all__ = ["Format", "Slots"]


@dataclass(frozen=True)
class Slots:
    """The value slots of an encoded tensor, in storage order.

    positions: flat (row-major) position in the weight of each slot; -1 for a slot that holds
        a filler or padding zero and is written nowhere. None: every position, in order.
    rows: output channel (row of the 2-D view) of each slot, for per-channel scales.
        None: every position, in order.
    count: the number of slots.
    """

    positions: np.ndarray | None
    rows: np.ndarray | None
    count: int


class Format(ABC):
    """An index format: counts, writes and reads the structure part of a payload."""

    name: str

    @abstractmethod
    def count(self, mask: np.ndarray, spec: Spec) -> tuple[int, int, Spec]:
        """(value slots, index bits, spec with inferred fields filled in) for this mask."""

    @abstractmethod
    def write(self, mask: np.ndarray, spec: Spec, writer: BitWriter) -> Slots:
        """Write the index part for this mask (spec already resolved); say where slots go."""

    @abstractmethod
    def read(self, reader: BitReader, shape: tuple[int, ...], spec: Spec) -> Slots:
        """Read the index part written by `write`; say where slots go."""
