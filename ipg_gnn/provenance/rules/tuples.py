"""Picking one tensor out of an op's tuple output (BatchNorm, max-pool with indices, split).

The item keeps the unit map its producer gave it; items without one (indices, saved
statistics) stay uncaptured, and a rule reading them stops the capture.
"""

from __future__ import annotations

import operator

import torch.fx

from ipg_gnn.provenance.rules import rule


@rule(operator.getitem)
def getitem(b, node: torch.fx.Node) -> None:
    src, index = node.args
    maps = b.maps.get(getattr(src, "name", ""))
    if not isinstance(maps, tuple):
        raise b.fail(node, "indexing a tensor; only tuples of tensors")
    if maps[index] is not None:
        b.set(node, maps[index])
