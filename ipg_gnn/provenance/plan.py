"""Tracing a model into a capture plan: which units become IPG nodes and how edges are computed.

The model is traced with `torch.fx`; each node of the traced graph is handled by one rule:

* weight layers (`Linear`, `Conv1d`, `Conv2d`) become IPG layers, one node per neuron / channel,
  with a BatchNorm that directly follows them folded into their weights;
* a residual add becomes an IPG layer whose nodes receive identity edges from both operands;
* unit-wise ops (activations, pooling, dropout, a BatchNorm that cannot be folded) and
  `Flatten` / `cat` only change which node each unit of a tensor belongs to.

Every edge-producing op is put in one form, `contrib[n, i, j] = sum_k W[i, j, k] * S[n, j, k]`:
for a dense layer `S` is the input value (`K = 1`, or the positions of a flattened channel), for
a convolution `S[n, j, k]` sums input channel `j` over all windows at kernel offset `k`, which one
convolution with an all-ones kernel gives without any per-position tensor.

An op without a rule stops the plan with an error naming the op and its module path.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


class UnsupportedOpError(NotImplementedError):
    """The model contains an op the IPG capture has no rule for."""


# Ops that only act on spatial positions: they need per-channel units, not per-pixel ones.
SPATIAL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)
SPATIAL_FUNCTIONS = (
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
)
# Ops that map each unit to itself.
UNIT_WISE_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Dropout,
    nn.Identity,
    *SPATIAL_MODULES,
)
UNIT_WISE_FUNCTIONS = (
    F.relu,
    torch.relu,
    F.leaky_relu,
    F.gelu,
    torch.sigmoid,
    torch.tanh,
    F.sigmoid,
    F.tanh,
    F.dropout,
    *SPATIAL_FUNCTIONS,
)
UNIT_WISE_METHODS = ("relu", "sigmoid", "tanh")
ADD_FUNCTIONS = (operator.add, torch.add, operator.iadd)


@dataclass(frozen=True)
class Layer:
    """A group of IPG nodes: the units of one weight layer, of a residual add, or of the input."""

    name: str
    kind: str  # "input" | "linear" | "conv" | "add"
    num_units: int
    offset: int
    position: int


@dataclass(frozen=True)
class UnitMap:
    """Which IPG node each unit of a tensor belongs to (-1: a unit that is not captured).

    `nodes` has one entry per channel (per feature for 2-D tensors); after a flatten, `block`
    features in a row share a node (the positions of one channel). `per_element` marks the input
    in pixel mode, where every element is its own node."""

    nodes: torch.Tensor
    block: int = 1
    per_element: bool = False


@dataclass
class CaptureOp:
    """One edge-producing op in S-form: a destination layer, its weights `W` (Fo, Fi, K) and
    how to compute `S` (N, Fi, K) from the recorded input values."""

    kind: str  # "linear" | "conv" | "add"
    layer: Layer
    inputs: list[str]  # fx node names whose values feed this op
    src_nodes: torch.Tensor  # (Fi,) global node index of each input unit, -1 if not captured
    weight: torch.Tensor | None = None  # (Fo, Fi, K); None for add
    bias_total: torch.Tensor | None = None  # (Fo,) bias summed over output positions
    block: int = 1  # linear over a flattened channel map: K = block positions per channel
    conv: dict = field(default_factory=dict)  # pads (l, r, t, b), stride, dilation, kernel, 1d

    def stats(self, values: dict[str, torch.Tensor], out_shape: torch.Size) -> torch.Tensor:
        """S (N, Fi, K) for the recorded input values."""
        if self.kind == "linear":
            a = values[self.inputs[0]]
            return a.reshape(len(a), -1, self.block)
        if self.kind == "conv":
            return window_sums(values[self.inputs[0]], out_shape, **self.conv)
        sums = [_position_sum(values[name]) for name in self.inputs]
        return torch.cat(sums, dim=1).unsqueeze(-1)


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


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _conv_geometry(conv: nn.Conv1d | nn.Conv2d, path: str) -> dict:
    if conv.groups != 1:
        raise UnsupportedOpError(
            f"{path}: convolution with groups={conv.groups}; the IPG capture supports groups=1 only"
        )
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


def _fold_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm1d | nn.BatchNorm2d | None
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


@dataclass
class Plan:
    """The traced model's IPG layout: layers (node order), edge-producing ops, and the fx nodes
    whose values a capture records."""

    graph_module: torch.fx.GraphModule
    layers: list[Layer]
    ops: list[CaptureOp]
    outputs: dict[str, str]  # layer name -> fx node holding its units' values (pre-activation)
    input_shape: tuple[int, ...]

    @property
    def num_nodes(self) -> int:
        return sum(layer.num_units for layer in self.layers)

    def node_table(self) -> list[tuple[str, int]]:
        """(layer name, unit index) of every node, in node order."""
        return [(layer.name, u) for layer in self.layers for u in range(layer.num_units)]

    def weight_layers(self) -> list[str]:
        """The weight layers (Linear, Conv) in forward order: what a repair can change."""
        return [op.layer.name for op in self.ops if op.kind != "add"]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no IPG layer {name!r}; layers: {', '.join(x.name for x in self.layers)}")


def _path(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    owner = list(stack.values())[-1][0] if stack else "<top level>"
    return f"{owner} ({node.name})"


def _describe(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {node.target}"


def _first_weight_layer(gm: torch.fx.GraphModule) -> type | None:
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d):
                return type(mod)
    return None


def build_plan(model: nn.Module, example: torch.Tensor, include_input: bool = False) -> Plan:
    """Trace `model` on `example` (a batch of at least one input) into a capture :class:`Plan`."""
    gm = torch.fx.symbolic_trace(model)
    gm.eval()
    shapes: dict[str, torch.Size] = {}

    class _Shapes(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = out.shape
            return out

    with torch.no_grad():
        _Shapes(gm).run(example[:1])
    return _PlanBuilder(gm, shapes, include_input).build(tuple(example.shape[1:]))


class _PlanBuilder:
    """Walks the traced graph once, applying one rule per node."""

    def __init__(
        self, gm: torch.fx.GraphModule, shapes: dict[str, torch.Size], include_input: bool
    ) -> None:
        self.gm, self.shapes, self.include_input = gm, shapes, include_input
        self.layers: list[Layer] = []
        self.ops: list[CaptureOp] = []
        self.outputs: dict[str, str] = {}
        self.maps: dict[str, UnitMap] = {}
        self.folded: dict[str, str] = {}  # weight-layer node -> BN node folded into it
        self.pending: dict[str, tuple] = {}  # weight-layer node -> (module, input node)

    def new_layer(self, name: str, kind: str, units: int) -> Layer:
        offset = sum(x.num_units for x in self.layers)
        layer = Layer(name, kind, units, offset, len(self.layers))
        self.layers.append(layer)
        return layer

    def build(self, input_shape: tuple[int, ...]) -> Plan:
        for node in self.gm.graph.nodes:
            self.visit(node)
        for name in list(self.pending):
            self.finish_weight_layer(name)
        order = {layer.name: i for i, layer in enumerate(self.layers)}
        self.ops.sort(key=lambda op: order[op.layer.name])
        return Plan(self.gm, self.layers, self.ops, self.outputs, input_shape)

    def fail(self, node: torch.fx.Node, why: str = "") -> UnsupportedOpError:
        return UnsupportedOpError(
            f"IPG capture has no rule for {_describe(node, self.gm)} at {_path(node)}"
            + (f": {why}" if why else "")
            + ". Supported: Linear, Conv1d/Conv2d, BatchNorm, "
            "ReLU/LeakyReLU/GELU/Sigmoid/Tanh, Max/Avg/AdaptiveAvg pooling, Flatten, Dropout, "
            "residual add, cat"
        )

    def tensor_map(self, arg, node: torch.fx.Node) -> UnitMap:
        if not isinstance(arg, torch.fx.Node) or arg.name not in self.maps:
            raise self.fail(node, "an operand is not a captured tensor")
        if arg.name in self.pending:
            self.finish_weight_layer(arg.name)
        return self.maps[arg.name]

    def visit(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            return self.placeholder(node)
        if node.op == "output":
            return None
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            if isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d):
                self.tensor_map(node.args[0], node)
                self.pending[node.name] = (mod, node.args[0])
                self.maps[node.name] = UnitMap(torch.empty(0, dtype=torch.long))
                return None
            if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                return self.batchnorm(node, mod)
            if isinstance(mod, nn.Flatten):
                return self.flatten(node, mod.start_dim, mod.end_dim)
            if isinstance(mod, UNIT_WISE_MODULES):
                return self.unit_wise(node, isinstance(mod, SPATIAL_MODULES))
            raise self.fail(node)
        if node.op == "call_function":
            if node.target in UNIT_WISE_FUNCTIONS:
                return self.unit_wise(node, node.target in SPATIAL_FUNCTIONS)
            if node.target in ADD_FUNCTIONS:
                return self.add(node)
            if node.target is torch.flatten:
                return self.flatten(node, *node.args[1:3], **node.kwargs)
            if node.target is torch.cat:
                return self.cat(node)
            raise self.fail(node)
        if node.op == "call_method":
            if node.target in UNIT_WISE_METHODS:
                return self.unit_wise(node, False)
            if node.target == "flatten":
                return self.flatten(node, *node.args[1:3], **node.kwargs)
            hint = (
                "use nn.Flatten instead of view/reshape"
                if node.target in ("view", "reshape", "size")
                else ""
            )
            raise self.fail(node, hint)
        raise self.fail(node)

    def placeholder(self, node: torch.fx.Node) -> None:
        shape = self.shapes[node.name][1:]
        per_element = len(shape) == 1 or _first_weight_layer(self.gm) is nn.Linear
        units = int(torch.tensor(shape).prod()) if per_element else int(shape[0])
        if self.include_input:
            layer = self.new_layer("input", "input", units)
            nodes = torch.arange(layer.offset, layer.offset + units)
            self.outputs["input"] = node.name
        else:
            nodes = torch.full((units,), -1, dtype=torch.long)
        self.maps[node.name] = UnitMap(nodes, 1, per_element and len(shape) > 1)

    def unit_wise(self, node: torch.fx.Node, spatial: bool) -> None:
        m = self.tensor_map(node.args[0], node)
        if spatial and m.per_element:
            raise self.fail(node, "pooling over input pixels that are captured one node each")
        self.maps[node.name] = m

    def batchnorm(self, node: torch.fx.Node, bn: nn.Module) -> None:
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and src.name in self.pending and len(src.users) == 1:
            self.folded[src.name] = node.name
            self.finish_weight_layer(src.name, bn)
            self.maps[node.name] = self.maps[src.name]
            return
        self.unit_wise(node, False)

    def flatten(self, node: torch.fx.Node, start_dim: int = 1, end_dim: int = -1) -> None:
        m = self.tensor_map(node.args[0], node)
        ndim = len(self.shapes[node.args[0].name])
        if start_dim != 1 or end_dim not in (-1, ndim - 1):
            raise self.fail(
                node,
                f"flatten(start_dim={start_dim}, end_dim={end_dim}); only "
                "flattening everything after the batch dimension",
            )
        in_shape = self.shapes[node.args[0].name]
        positions = int(torch.tensor(in_shape[2:]).prod()) if ndim > 2 else 1
        if m.per_element:
            self.maps[node.name] = UnitMap(m.nodes, 1)
        else:
            self.maps[node.name] = UnitMap(m.nodes, m.block * positions)

    def cat(self, node: torch.fx.Node) -> None:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        ndim = len(self.shapes[node.name])
        if dim not in (1, 1 - ndim) or ndim < 2:
            raise self.fail(node, f"cat along dim {dim}; only along the unit dimension 1")
        maps = [self.tensor_map(t, node) for t in tensors]
        if len({(m.block, m.per_element) for m in maps}) != 1:
            raise self.fail(node, "cat of tensors whose units have different layouts")
        self.maps[node.name] = UnitMap(
            torch.cat([m.nodes for m in maps]), maps[0].block, maps[0].per_element
        )

    def add(self, node: torch.fx.Node) -> None:
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
            raise self.fail(node, "only a plain sum of two tensors")
        operands = node.args
        maps = [self.tensor_map(t, node) for t in operands]
        shapes = [self.shapes.get(getattr(t, "name", ""), None) for t in operands]
        if shapes[0] != shapes[1] or any(m.block != 1 or m.per_element for m in maps):
            raise self.fail(node, "residual add of tensors with different shapes or layouts")
        stack = node.meta.get("nn_module_stack") or {}
        owner = list(stack.values())[-1][0] if stack else ""
        name = f"{owner}.{node.name}" if owner else node.name
        layer = self.new_layer(name, "add", len(maps[0].nodes))
        self.outputs[name] = node.name
        self.ops.append(
            CaptureOp("add", layer, [t.name for t in operands], torch.cat([m.nodes for m in maps]))
        )
        self.maps[node.name] = UnitMap(torch.arange(layer.offset, layer.offset + layer.num_units))

    def finish_weight_layer(self, name: str, bn: nn.Module | None = None) -> None:
        """Create the IPG layer of a Linear/Conv node, folding `bn` when it follows directly."""
        mod, src = self.pending.pop(name)
        node = next(n for n in self.gm.graph.nodes if n.name == name)
        in_map = self.maps[src.name]
        w, b = _fold_bn(mod.weight.detach(), None if mod.bias is None else mod.bias.detach(), bn)
        out_name = self.folded.get(name, name)
        out_shape = self.shapes[out_name]
        if isinstance(mod, nn.Linear):
            if len(self.shapes[src.name]) != 2:
                raise self.fail(node, "Linear applied to a tensor that is not (batch, features)")
            layer = self.new_layer(str(node.target), "linear", mod.out_features)
            fi = len(in_map.nodes)
            op = CaptureOp(
                "linear",
                layer,
                [src.name],
                in_map.nodes,
                w.reshape(mod.out_features, fi, in_map.block),
                b,
                block=in_map.block,
            )
        else:
            if in_map.per_element or in_map.block != 1:
                raise self.fail(node, "convolution over per-element units")
            geometry = _conv_geometry(mod, str(node.target))
            positions = int(torch.tensor(out_shape[2:]).prod())
            layer = self.new_layer(str(node.target), "conv", mod.out_channels)
            op = CaptureOp(
                "conv",
                layer,
                [src.name],
                in_map.nodes,
                w.reshape(mod.out_channels, mod.in_channels, -1),
                b * positions,
                conv=geometry,
            )
        self.ops.append(op)
        self.outputs[layer.name] = out_name
        self.maps[name] = UnitMap(torch.arange(layer.offset, layer.offset + layer.num_units))
