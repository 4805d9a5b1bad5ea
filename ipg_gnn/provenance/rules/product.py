"""Element-wise products and quotients: scalar scaling, SE / attention gates, swish, GLU.

A product `out = a * g` where `g` is a *gate* (a number, a constant, a factor broadcast over
`a`'s shape such as an SE block's (N, C, 1, 1) output, or a sigmoid / hard-sigmoid / tanh of
data) is read as the carrier `a` scaled by a data-dependent coefficient: every unit of `out`
keeps the node of the same unit of `a`. The contribution of unit `j` through the product is
then the contribution of its gated value: a later weight layer gets `W[i, j] * g[j] * a[j]`
from node `j` (the gate network's own layers are captured as nodes but send no edges through
the product). The conservation invariant holds at every weight layer, whose contributions are
computed from its recorded input. Two same-shape factors with the same units (`x * x`) keep
them too; two same-shape factors from different units with no gate among them are refused.
"""

from __future__ import annotations

import torch
import torch.fx

from ipg_gnn.provenance.rules import rule

aten = torch.ops.aten
GATES = (aten.sigmoid, aten.hardsigmoid, aten.tanh)


def _is_data(arg) -> bool:
    return isinstance(arg, torch.fx.Node) and arg.op != "get_attr"


def _is_gate(arg: torch.fx.Node) -> bool:
    return getattr(arg.target, "overloadpacket", None) in GATES


def carrier(b, node: torch.fx.Node) -> torch.fx.Node:
    """The factor whose units the product's output keeps."""
    a, g = node.args[:2]
    if not _is_data(g) or not _is_data(a):
        return a if _is_data(a) else g
    full = [t for t in (a, g) if b.shape(t) == b.shape(node)]
    if len(full) == 1:
        return full[0]
    ma, mg = b.map(a, node), b.map(g, node)
    if torch.equal(ma.nodes, mg.nodes) and (ma.block, ma.per_element) == (mg.block, mg.per_element):
        return a
    if _is_gate(a) != _is_gate(g):
        return g if _is_gate(a) else a
    raise b.fail(
        node,
        "product of two same-shape tensors from different units, neither a gate "
        "(sigmoid/hardsigmoid/tanh or a broadcast factor)",
    )


@rule(aten.mul, aten.div)
def product(b, node: torch.fx.Node) -> None:
    b.set(node, b.map(carrier(b, node), node))
