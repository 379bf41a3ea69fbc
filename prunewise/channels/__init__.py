"""Channels as the tracer follows them (numbered channels, layouts, ties) and the view of one
operation that channel rules use. Layer types (prunewise.layers) and the tracer
(prunewise.graph) both build on this package; it depends on neither."""

from prunewise.channels.layout import Channels, Layout
from prunewise.channels.ops import Op, Patch, TracerState

__all__ = ["Channels", "Layout", "Op", "Patch", "TracerState"]
