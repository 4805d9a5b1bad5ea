"""BatchNorm (eval mode): folded into the weight layer it directly follows, else unit-wise.

Folding makes the layer's pre-activation the BatchNorm's output, so node features and the
conservation invariant are stated after normalisation. A BatchNorm after anything else (an add,
the input, a ReLU in a pre-activation block) scales each channel: it keeps every unit's node.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch import nn

from ipg_gnn.provenance.rules import rule

aten = torch.ops.aten
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding layer's weights (first dim = out units)."""
    bias = (
        torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        if bias is None
        else bias
    )
    if bn is None:
        return weight, bias
    bn_w, bn_b = (bn.weight.detach(), bn.bias.detach()) if bn.affine else (None, None)
    scale = (
        bn_w / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine
        else 1 / torch.sqrt(bn.running_var + bn.eps)
    )
    shift = bn_b if bn.affine else torch.zeros_like(scale)
    w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return w, (bias - bn.running_mean) * scale + shift


@rule(aten._native_batch_norm_legit_no_training)
def batch_norm(b, node: torch.fx.Node) -> None:
    """Output is (normalised, mean, invstd); only the first is a tensor of units."""
    path, bn = b.owned(node, node.args[3], "running_mean", BATCH_NORMS)
    out = next((u for u in node.users if u.target is operator.getitem and u.args[1] == 0), None)
    src = node.args[0]
    if out is not None and isinstance(src, torch.fx.Node) and b.fold(src, bn, out.name, path):
        b.set(node, (b.maps[src.name], None, None))
        return
    b.set(node, (b.map(src, node), None, None))
