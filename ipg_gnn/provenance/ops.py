"""The pieces a capture plan is made of: IPG layers, unit maps and edge-producing ops.

Every edge-producing op is put in one form, `contrib[n, i, j] = sum_k W[i, j, k] * S[n, j, k]`:
for a dense layer `S` is the input value (`K = 1`, or the positions of a flattened channel), for
a convolution `S[n, j, k]` sums input channel `j` over all windows at kernel offset `k`, which one
convolution with an all-ones kernel gives without any per-position tensor. A grouped convolution
is the same op with the weights of other groups zero and those (i, j) pairs marked unconnected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F

from ipg_gnn.errors import UserError


class UnsupportedOpError(UserError, NotImplementedError):
    """The model contains an op the IPG capture has no rule for, or cannot be traced at all."""


class LayerKind(str, Enum):
    """What a group of IPG nodes is; a `str` so saved topologies and string tests keep working."""

    INPUT = "input"
    LINEAR = "linear"
    CONV = "conv"
    ADD = "add"

    @property
    def is_weight(self) -> bool:
        """Whether the layer has weights (a repair can change its units)."""
        return self in (LayerKind.LINEAR, LayerKind.CONV)


@dataclass(frozen=True)
class Layer:
    """A group of IPG nodes: the units of one weight layer, of a residual add, or of the input."""

    name: str
    kind: LayerKind
    num_units: int
    offset: int
    position: int


@dataclass(frozen=True)
class UnitMap:
    """Which IPG node each unit of a tensor belongs to (-1: a unit that is not captured).

    `nodes` has one entry per channel (per feature for 2-D tensors); after a flatten, `block`
    features in a row share a node (the positions of one channel). `per_element` marks the input
    in pixel mode, where every element is its own node. `layout` is set instead for a tensor
    whose channels are spread over several dims (mid channel shuffle): then `nodes` holds the
    node of every element, in that per-sample shape, and only layout ops may consume it."""

    nodes: torch.Tensor
    block: int = 1
    per_element: bool = False
    layout: bool = False

    def element_nodes(self, shape: torch.Size) -> torch.Tensor:
        """The node of every element of one sample of `shape` (no batch dim)."""
        if self.layout or self.per_element:
            return self.nodes.reshape(shape)
        if len(shape) == 1:
            return self.nodes.repeat_interleave(self.block)
        return self.nodes.reshape(-1, *[1] * (len(shape) - 1)).expand(shape)

    @classmethod
    def from_element_nodes(cls, ids: torch.Tensor, block: int = 1) -> UnitMap:
        """Per-channel (or, for 1-D samples, per-block) map of element nodes where one exists."""
        if ids.ndim == 1:
            heads = ids[::block]
            if len(ids) % block == 0 and torch.equal(heads.repeat_interleave(block), ids):
                return cls(heads, block)
            return cls(ids, layout=True)
        flat = ids.reshape(len(ids), -1)
        if bool((flat == flat[:, :1]).all()):
            return cls(flat[:, 0].contiguous())
        return cls(ids, layout=True)


@dataclass
class CaptureOp:
    """One edge-producing op in S-form: a destination layer, its weights `W` (Fo, Fi, K) and
    how to compute `S` (N, Fi, K) from the recorded input values."""

    kind: LayerKind
    layer: Layer
    inputs: list[str]  # fx node names whose values feed this op
    src_nodes: torch.Tensor  # (Fi,) global node index of each input unit, -1 if not captured
    weight: torch.Tensor | None = None  # (Fo, Fi, K); None for add
    bias_total: torch.Tensor | None = None  # (Fo,) bias summed over output positions
    block: int = 1  # linear over a flattened channel map: K = block positions per channel
    conv: dict = field(default_factory=dict)  # pads (l, r, t, b), stride, dilation, kernel, 1d
    groups: int = 1
    weight_shape: torch.Size | None = None  # the module's `.weight` shape
    norm: str | None = None  # module path of a BatchNorm folded into this layer

    def stats(self, values: dict[str, torch.Tensor], out_shape: torch.Size) -> torch.Tensor:
        """S (N, Fi, K) for the recorded input values."""
        if self.kind == LayerKind.LINEAR:
            a = values[self.inputs[0]]
            return a.reshape(len(a), -1, self.block)
        if self.kind == LayerKind.CONV:
            return window_sums(values[self.inputs[0]], out_shape, **self.conv)
        sums = [_position_sum(values[name]) for name in self.inputs]
        return torch.cat(sums, dim=1).unsqueeze(-1)

    @property
    def unit_modules(self) -> list[str]:
        """Module paths whose parameters a unit of this layer owns (indexed by unit along their
        first dimension): the layer's own and a BatchNorm folded into it."""
        return [self.layer.name, *([self.norm] if self.norm else [])]

    def connected(self) -> torch.Tensor:
        """(Fo, Fi): which (unit, input unit) pairs can carry an edge: captured inputs, and for
        a grouped convolution only those of the unit's own group."""
        valid = (self.src_nodes >= 0).expand(self.layer.num_units, -1)
        if self.groups == 1:
            return valid
        return valid & self._same_group()

    def _same_group(self) -> torch.Tensor:
        fo, fi = self.layer.num_units, len(self.src_nodes)
        out_group = torch.arange(fo) // (fo // self.groups)
        in_group = torch.arange(fi) // (fi // self.groups)
        return out_group[:, None] == in_group[None, :]

    @property
    def weights_per_edge(self) -> int:
        """Module weights one edge carries: a flattened channel's positions, a kernel slice."""
        if self.weight is None:
            raise ValueError(f"{self.layer.name} is a {self.kind.value} layer without weights")
        return int(self.weight.shape[-1])

    def edge_entries(self, unit: int, source_node: int) -> torch.Tensor:
        """Bool mask over the module's `.weight` of the weights of edge source_node -> unit."""
        if self.weight_shape is None:
            raise ValueError(f"{self.layer.name} is a {self.kind.value} layer without weights")
        inputs = (self.src_nodes == source_node) & self.connected()[unit]
        if not bool(inputs.any()):
            raise ValueError(f"node {source_node} does not feed unit {unit} of {self.layer.name}")
        fo, fi = self.layer.num_units, len(self.src_nodes)
        if self.groups > 1:  # the module keeps only the fi / groups inputs of the unit's group
            per_group = fi // self.groups
            start = unit // (fo // self.groups) * per_group
            inputs = inputs[start : start + per_group]
        mask = torch.zeros(self.weight_shape, dtype=torch.bool)
        mask.view(fo, len(inputs), -1)[unit, inputs] = True
        return mask


def _position_sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


def window_sums(
    a: torch.Tensor,
    out_shape: torch.Size,
    pads: tuple[int, int, int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    kernel: tuple[int, int],
    is_1d: bool,
) -> torch.Tensor:
    """S[n, j, (u, v)]: input channel j summed over every window position at kernel offset
    (u, v), for a convolution with the given geometry. One strided convolution with an all-ones
    kernel of the output's spatial size computes it: its stride is the original dilation and its
    dilation the original stride (done as two 1-D passes, the kernel being separable)."""
    if is_1d:
        a = a.unsqueeze(2)
    n, c = a.shape[:2]
    out_h, out_w = (1, out_shape[-1]) if is_1d else tuple(out_shape[-2:])
    left, right, top, bottom = pads
    padding = (top, left)
    if left != right or top != bottom:  # asymmetric ('same' with an even kernel): pad by hand
        a, padding = F.pad(a, pads), (0, 0)
    # The all-ones kernel is separable: sum over rows, then over columns.
    rows = torch.ones(1, 1, out_h, 1, dtype=a.dtype, device=a.device)
    cols = torch.ones(1, 1, 1, out_w, dtype=a.dtype, device=a.device)
    s = F.conv2d(
        a.reshape(n * c, 1, *a.shape[-2:]),
        rows,
        stride=(dilation[0], 1),
        dilation=(stride[0], 1),
        padding=padding,
    )
    s = F.conv2d(s, cols, stride=(1, dilation[1]), dilation=(1, stride[1]))
    return s[:, 0, : kernel[0], : kernel[1]].reshape(n, c, kernel[0] * kernel[1])
