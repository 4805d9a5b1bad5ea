"""Linear: an IPG layer of one node per output feature; S-form with `K` = the block of
positions of a flattened channel (1 for plain features), so `contrib[i, j] = sum_k W[i, (j, k)]
* a[(j, k)]`. The layer's name is the module path of the `nn.Linear` owning the weight."""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from ipg_gnn.provenance.ops import CaptureOp, LayerKind
from ipg_gnn.provenance.rules import rule
from ipg_gnn.provenance.rules.batchnorm import fold_bn

aten = torch.ops.aten
LINEAR_OPS = (aten.linear,)


@rule(*LINEAR_OPS)
def linear(b, node: torch.fx.Node) -> None:
    src = node.args[0]
    path, mod = b.owned(node, node.args[1], "weight", (nn.Linear,))
    in_map = b.map(src, node)
    if len(b.shape(src)) != 2:
        raise b.fail(node, "Linear applied to a tensor that is not (batch, features)")

    def make(bn: nn.Module | None) -> CaptureOp:
        bias = None if mod.bias is None else mod.bias.detach()
        w, bias = fold_bn(mod.weight.detach(), bias, bn)
        layer = b.new_layer(path, LayerKind.LINEAR, mod.out_features)
        fi = len(in_map.nodes)
        return CaptureOp(
            LayerKind.LINEAR,
            layer,
            [src.name],
            in_map.nodes,
            w.reshape(mod.out_features, fi, in_map.block),
            bias,
            block=in_map.block,
            weight_shape=mod.weight.shape,
        )

    b.defer(node, make)
