"""Unit-wise ops: each output element depends on the same element of the input only
(activations, eval-mode dropout, copies), so every unit keeps its node and no edge is made
(also mid channel shuffle, where a unit's node is tracked per element).

Contributions into the next weight layer are computed from the values after the op, so the
conservation invariant holds whatever the function.
"""

from __future__ import annotations

import torch
import torch.fx

from ipg_gnn.provenance.rules import rule

aten = torch.ops.aten
ACTIVATIONS = (
    aten.relu,
    aten.leaky_relu,
    aten.gelu,
    aten.sigmoid,
    aten.tanh,
    aten.hardtanh,  # ReLU6
    aten.relu6,
    aten.elu,
    aten.selu,
    aten.celu,
    aten.softplus,
    aten.silu,
    aten.mish,
    aten.hardswish,
    aten.hardsigmoid,
    aten.neg,
)
COPIES = (
    aten.dropout,
    aten.feature_dropout,  # Dropout2d
    aten.alpha_dropout,
    aten.feature_alpha_dropout,
    aten.clone,
    aten.contiguous,
    aten.alias,
    aten.detach,
)


@rule(*ACTIVATIONS, *COPIES)
def unit_wise(b, node: torch.fx.Node) -> None:
    b.set(node, b.map(node.args[0], node, layout_ok=True))
