"""Mean / sum / max over positions (`x.mean((2, 3))`, global pooling written by hand): each
channel's output comes from that channel only, so it keeps its node; with `keepdim=False` the
result is a (batch, channels) tensor of the same nodes. Reducing over the batch or unit dim is
refused: it would merge units."""

from __future__ import annotations

import torch
import torch.fx

from ipg_gnn.provenance.rules import rule
from ipg_gnn.provenance.rules.pooling import channel_map

aten = torch.ops.aten


@rule(aten.mean, aten.sum, aten.amax)
def reduce_positions(b, node: torch.fx.Node) -> None:
    ndim = len(b.shape(node.args[0]))
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else dims
    if not dims or any(d % ndim < 2 for d in dims):
        raise b.fail(node, "reducing over the batch or unit dimension; only over positions")
    b.set(node, channel_map(b, node))
