"""Addition. Two data tensors of one shape (a residual add) make an IPG layer of one node per
channel whose incoming edges are identities from both operands: contribution = the operand's
value summed over positions, weight 1, so contributions sum to the add's output. Adding a
constant (a Python number, a parameter or buffer) shifts each unit: it keeps every unit's node.
"""

from __future__ import annotations

import torch
import torch.fx

from ipg_gnn.provenance.ops import CaptureOp, LayerKind
from ipg_gnn.provenance.rules import rule

aten = torch.ops.aten


def _is_data(arg) -> bool:
    return isinstance(arg, torch.fx.Node) and arg.op != "get_attr"


@rule(aten.add)
def add(b, node: torch.fx.Node) -> None:
    operands = node.args[:2]
    data = [a for a in operands if _is_data(a)]
    if len(data) == 1:
        b.set(node, b.map(data[0], node))
        return
    if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
        raise b.fail(node, "only a plain sum of two tensors")
    maps = [b.map(t, node) for t in operands]
    if b.shape(operands[0]) != b.shape(operands[1]) or any(
        m.block != 1 or m.per_element for m in maps
    ):
        raise b.fail(node, "residual add of tensors with different shapes or layouts")
    layer = b.new_layer(b.add_layer_name(node), LayerKind.ADD, len(maps[0].nodes))
    op = CaptureOp(
        LayerKind.ADD, layer, [t.name for t in operands], torch.cat([m.nodes for m in maps])
    )
    b.add_op(op, node)
