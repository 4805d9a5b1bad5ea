"""Conv1d / Conv2d, grouped and depthwise included: an IPG layer of one node per output channel.

`contrib[n, i, j] = sum_k W[i, j, k] * S[n, j, k]` with `S` the window sums of input channel `j`
at kernel offset `k` (see :func:`~ipg_gnn.provenance.ops.window_sums`): the channel-to-channel
contribution summed over output positions. With `groups > 1`, channel `i` receives only from the
input channels of its group: the weights are laid out over all input channels with zeros
elsewhere, and the op marks only same-group pairs as connected (no edges between groups).
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from ipg_gnn.provenance.ops import CaptureOp, LayerKind, UnsupportedOpError
from ipg_gnn.provenance.rules import rule
from ipg_gnn.provenance.rules.batchnorm import fold_bn

aten = torch.ops.aten
CONV_OPS = (aten.conv1d, aten.conv2d)


def conv_geometry(conv: nn.Conv1d | nn.Conv2d, path: str) -> dict:
    """Padding (l, r, t, b), stride, dilation and kernel of `conv`, 1-D convs as 1 x L."""
    if conv.padding_mode != "zeros":
        raise UnsupportedOpError(f"{path}: padding_mode={conv.padding_mode!r}; only 'zeros'")
    is_1d = isinstance(conv, nn.Conv1d)
    kernel = (1, conv.kernel_size[0]) if is_1d else tuple(conv.kernel_size)
    stride = (1, conv.stride[0]) if is_1d else tuple(conv.stride)
    dilation = (1, conv.dilation[0]) if is_1d else tuple(conv.dilation)
    if isinstance(conv.padding, str):
        pads = []
        for k, d in zip(kernel[::-1], dilation[::-1], strict=True):
            total = d * (k - 1) if conv.padding == "same" else 0
            pads += [total // 2, total - total // 2]
    else:
        ph, pw = (0, conv.padding[0]) if is_1d else tuple(conv.padding)
        pads = [pw, pw, ph, ph]
    return {
        "pads": tuple(pads),
        "stride": stride,
        "dilation": dilation,
        "kernel": kernel,
        "is_1d": is_1d,
    }


def ungroup(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(Co, Ci / groups, K) grouped weights as (Co, Ci, K), zero outside each unit's group."""
    co, ci_g, k = w.shape
    dense = w.new_zeros(groups, co // groups, groups, ci_g, k)
    g = torch.arange(groups)
    dense[g, :, g] = w.reshape(groups, co // groups, ci_g, k)
    return dense.reshape(co, groups * ci_g, k)


@rule(*CONV_OPS)
def conv(b, node: torch.fx.Node) -> None:
    src = node.args[0]
    path, mod = b.owned(node, node.args[1], "weight", (nn.Conv1d, nn.Conv2d))
    in_map = b.map(src, node)
    if in_map.per_element or in_map.block != 1:
        raise b.fail(node, "convolution over per-element units")
    geometry = conv_geometry(mod, path)
    positions = int(torch.tensor(b.shape(node)[2:]).prod())

    def make(bn: nn.Module | None) -> CaptureOp:
        bias = None if mod.bias is None else mod.bias.detach()
        w, bias = fold_bn(mod.weight.detach(), bias, bn)
        w = w.reshape(mod.out_channels, mod.in_channels // mod.groups, -1)
        layer = b.new_layer(path, LayerKind.CONV, mod.out_channels)
        return CaptureOp(
            LayerKind.CONV,
            layer,
            [src.name],
            in_map.nodes,
            w if mod.groups == 1 else ungroup(w, mod.groups),
            bias * positions,
            conv=geometry,
            groups=mod.groups,
            weight_shape=mod.weight.shape,
        )

    b.defer(node, make)
