"""Trace models and find the channel groups that must be pruned together."""

from prunewise.channels.layout import Layout
from prunewise.channels.ops import Op
from prunewise.graph.allowlist import allow_function, allow_module_type
from prunewise.graph.functions import register_function_rule
from prunewise.graph.groups import ChannelGraph, ChannelGroup, ChannelMap, build_channel_graph
from prunewise.graph.trace import propagate_shapes, trace

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "ChannelMap",
    "Layout",
    "Op",
    "allow_function",
    "allow_module_type",
    "build_channel_graph",
    "propagate_shapes",
    "register_function_rule",
    "trace",
]
