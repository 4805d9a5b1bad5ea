"""Pooling over positions (max, average, adaptive average): a channel's output positions come
from the same channel only, so each channel keeps its node. Refused on input pixels captured
one node each, whose nodes pooling would merge."""

from __future__ import annotations

import torch
import torch.fx

from ipg_gnn.provenance.ops import UnitMap
from ipg_gnn.provenance.rules import rule

aten = torch.ops.aten


def channel_map(b, node: torch.fx.Node) -> UnitMap:
    """The input's per-channel unit map, for an op that mixes positions within a channel."""
    m = b.map(node.args[0], node)
    if m.per_element or len(b.shape(node.args[0])) < 3:
        raise b.fail(node, "mixing positions of units that are not channels (input pixels)")
    return m


@rule(
    aten.max_pool1d,
    aten.max_pool2d,
    aten.avg_pool1d,
    aten.avg_pool2d,
    aten.adaptive_avg_pool1d,
    aten.adaptive_avg_pool2d,
)
def pool(b, node: torch.fx.Node) -> None:
    b.set(node, channel_map(b, node))


@rule(aten.max_pool2d_with_indices, aten.adaptive_max_pool2d)
def pool_with_indices(b, node: torch.fx.Node) -> None:
    b.set(node, (channel_map(b, node), None))
