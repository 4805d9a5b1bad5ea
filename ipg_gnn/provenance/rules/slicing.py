"""Slicing, split and chunk along a unit or position dim: each piece keeps the nodes of the
elements it holds (a slice of channels is a subset of their nodes; a crop of positions keeps
every channel's node). Slicing the batch dim is refused unless it keeps the whole batch (as
`x[:, :k]` first emits a full slice of dim 0)."""

from __future__ import annotations

import torch
import torch.fx

from ipg_gnn.provenance.rules import rule
from ipg_gnn.provenance.rules.reshape import apply_to_nodes

aten = torch.ops.aten
FULL = 2**63 - 1


def _dim(b, node: torch.fx.Node, position: int) -> int:
    """The op's dim argument (at `position`, default 0), made non-negative."""
    dim = node.args[position] if len(node.args) > position else node.kwargs.get("dim", 0)
    return dim % len(b.shape(node.args[0]))


@rule(aten.slice)
def slice_(b, node: torch.fx.Node) -> None:
    src = node.args[0]
    if _dim(b, node, 1) == 0:
        start, end, step = (list(node.args[2:]) + [None, None, 1])[:3]
        if (start or 0) != 0 or (end is not None and end < FULL) or (step or 1) != 1:
            raise b.fail(node, "slicing the batch dimension")
        b.set(node, b.map(src, node, layout_ok=True))
        return
    b.set(node, apply_to_nodes(b, node, src)[0])


@rule(aten.split, aten.split_with_sizes, aten.chunk)
def split(b, node: torch.fx.Node) -> None:
    if _dim(b, node, 2) == 0:
        raise b.fail(node, "splitting the batch dimension")
    b.set(node, tuple(apply_to_nodes(b, node, node.args[0])))
