"""Concatenation along a unit or position dim (DenseNet, Inception branches, DPN): the output's
elements keep the nodes of the elements they were copied from, so a cat along channels lists
the operands' nodes in order. Concatenating along the batch dim is refused."""

from __future__ import annotations

import torch
import torch.fx

from ipg_gnn.provenance.rules import rule
from ipg_gnn.provenance.rules.reshape import apply_to_nodes

aten = torch.ops.aten


@rule(aten.cat)
def cat(b, node: torch.fx.Node) -> None:
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim % len(b.shape(node)) == 0:
        raise b.fail(node, f"cat along dim {dim}; only along a unit or position dimension")
    b.set(node, apply_to_nodes(b, node, *tensors)[0])
