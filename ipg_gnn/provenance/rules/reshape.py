"""Reshapes and dim reorders: view, reshape, flatten, (un)squeeze, permute, transpose.

A reshape to (batch, features) is a flatten of everything after the batch dim, however the
model spells it (`nn.Flatten`, `x.view(x.size(0), -1)`, `x.reshape(n, -1)`): a channel's
positions become a block of features of the same node, the layout a Linear after it reads.
Other reshapes and reorders (a channel shuffle's `view(n, g, c // g, h, w)` then
`transpose(1, 2)`) are applied to the node of every element; where the result has one node per
channel again the tensor has a plain unit map, else only further layout ops may consume it.
The batch dim must stay where it is and keep its size.
"""

from __future__ import annotations

import torch
import torch.fx

from ipg_gnn.provenance.ops import UnitMap
from ipg_gnn.provenance.rules import rule

aten = torch.ops.aten


def moves_batch(b, node: torch.fx.Node) -> bool:
    """Whether a layout op touches dim 0 (checked on its arguments, not on sizes, which may
    coincide)."""
    ndim = len(b.shape(node.args[0]))
    if node.target.overloadpacket is aten.permute:
        return node.args[1][0] % ndim != 0
    if node.target.overloadpacket is aten.transpose:
        return any(d % ndim == 0 for d in node.args[1:3])
    return b.shape(node)[0] != b.shape(node.args[0])[0]


def flatten_map(m: UnitMap, in_shape: torch.Size) -> UnitMap:
    """Units of a (batch, ...) tensor flattened to (batch, features)."""
    if m.per_element:
        return UnitMap(m.nodes, 1)
    positions = int(torch.tensor(in_shape[2:]).prod()) if len(in_shape) > 2 else 1
    return UnitMap(m.nodes, m.block * positions)


@rule(aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.squeeze, aten.unsqueeze)
def reshape(b, node: torch.fx.Node) -> None:
    src, out_shape = node.args[0], b.shape(node)
    if moves_batch(b, node):
        raise b.fail(node, "a reshape that changes the batch dimension")
    m = b.map(src, node, layout_ok=len(out_shape) > 2)
    if len(out_shape) == 2:
        b.set(node, flatten_map(m, b.shape(src)))
        return
    ids = m.element_nodes(b.shape(src)[1:]).reshape(out_shape[1:])
    b.set(node, UnitMap.from_element_nodes(ids, m.block))


@rule(aten.permute, aten.transpose)
def reorder(b, node: torch.fx.Node) -> None:
    if moves_batch(b, node):
        raise b.fail(node, "a permutation that moves the batch dimension")
    b.set(node, apply_to_nodes(b, node, node.args[0])[0])


def apply_to_nodes(b, node: torch.fx.Node, *tensors: torch.fx.Node) -> list[UnitMap]:
    """Run `node`'s op on the element nodes of its tensor operands (as a batch of one) with its
    other arguments; the unit map of each output tensor."""
    maps = {t.name: b.map(t, node, layout_ok=True) for t in tensors}
    ids = {t.name: maps[t.name].element_nodes(b.shape(t)[1:])[None] for t in tensors}

    def swap(arg):
        if isinstance(arg, torch.fx.Node):
            return ids[arg.name]
        return [swap(a) for a in arg] if isinstance(arg, list | tuple) else arg

    out = node.target(*swap(list(node.args)), **node.kwargs)
    block = maps[tensors[0].name].block
    outs = out if isinstance(out, list | tuple) else [out]
    return [UnitMap.from_element_nodes(o[0], block) for o in outs]
