"""Trace models and find the channel groups that must be pruned together."""

from prunewise.graph.allowlist import allow_function, allow_module_type
from prunewise.graph.groups import ChannelGraph, ChannelGroup, ChannelMap, build_channel_graph
from prunewise.graph.rules import Rule, register_channel_rule
from prunewise.graph.trace import propagate_shapes, trace

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "ChannelMap",
    "Rule",
    "allow_function",
    "allow_module_type",
    "build_channel_graph",
    "propagate_shapes",
    "register_channel_rule",
    "trace",
]
