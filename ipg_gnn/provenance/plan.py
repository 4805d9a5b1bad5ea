"""Tracing a model into a capture plan: which units become IPG nodes and how edges are computed.

The model is exported with `torch.export` (non-strict, batch dim dynamic) and functionalised
(`run_decompositions({})`): whatever Python idiom the model is written in (`x.view(x.size(0),
-1)`, `int(x.size(1) * ratio)`, `out += shortcut`, `relu(inplace=True)`), what comes out is a
graph of a small closed set of out-of-place ATen ops with known shapes, each node tagged with the
module that ran it. That is the auto_LiRPA recipe: one rule per primitive op (`rules/`), not one
per module type or Python idiom, and in-place ops need no rule of their own. `torch.fx` symbolic
tracing was the alternative; it cannot see through `int(x.size(1) * ratio)` and keeps in-place
ops, which would overwrite recorded pre-activations.

Each node of the graph is handled by its rule (see :mod:`ipg_gnn.provenance.rules`):

* weight layers (`Linear`, `Conv1d`, `Conv2d` incl. grouped) become IPG layers, one node per
  neuron / channel, with a BatchNorm that directly follows them folded into their weights;
* a residual add becomes an IPG layer whose nodes receive identity edges from both operands;
* every other op only changes which node each unit of a tensor belongs to.

An op without a rule stops the plan with an error naming the op, its module path and what to do.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.fx
from torch import nn
from torch.export import Dim

from ipg_gnn.provenance.ops import CaptureOp, Layer, LayerKind, UnitMap, UnsupportedOpError
from ipg_gnn.provenance.rules import RULES, op_name, supported_ops
from ipg_gnn.provenance.rules.conv import CONV_OPS
from ipg_gnn.provenance.rules.linear import LINEAR_OPS

Shape = torch.Size | tuple
MakeOp = Callable[[nn.Module | None], CaptureOp]


@dataclass
class CapturePlan:
    """The traced model's IPG layout: layers (node order), edge-producing ops, and the graph
    nodes whose values a capture records."""

    graph_module: torch.fx.GraphModule
    layers: list[Layer]
    ops: list[CaptureOp]
    outputs: dict[str, str]  # layer name -> graph node holding its units' values (pre-activation)
    input_shape: tuple[int, ...]

    @property
    def num_nodes(self) -> int:
        return sum(layer.num_units for layer in self.layers)

    def node_table(self) -> list[tuple[str, int]]:
        """(layer name, unit index) of every node, in node order."""
        return [(layer.name, u) for layer in self.layers for u in range(layer.num_units)]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no IPG layer {name!r}; layers: {', '.join(x.name for x in self.layers)}")

    def weight_layers(self) -> list[str]:
        """Module paths of the repairable (weight) layers, in forward order."""
        return [layer.name for layer in self.layers if layer.kind.is_weight]

    def op(self, layer_name: str) -> CaptureOp:
        """The edge-producing op of a layer."""
        for op in self.ops:
            if op.layer.name == layer_name:
                return op
        raise KeyError(f"no capture op for layer {layer_name!r}")


def trace(model: nn.Module, example: torch.Tensor, include_input: bool = False) -> CapturePlan:
    """Trace `model` (in eval mode) on `example` (a batch of at least one input) into a
    :class:`CapturePlan`."""
    was_training = model.training
    model.eval()
    try:
        gm, shapes = _export(model, example[:1])
        return PlanBuilder(model, gm, shapes, include_input).build(tuple(example.shape[1:]))
    finally:
        model.train(was_training)


def _export(model: nn.Module, one: torch.Tensor) -> tuple[torch.fx.GraphModule, dict[str, Shape]]:
    """The functional ATen graph of `model` (batch size left free) and every node's output
    shape on two copies of `one` (a batch of 1 would fix the batch size to 1)."""
    pair = torch.cat([one, one])
    try:
        # torch.export prints the partial graph of a failed trace to stderr: captured here, the
        # project's one-line error says what failed instead.
        with (
            warnings.catch_warnings(),
            _no_trace_log_propagation(),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            exported = torch.export.export(
                model, (pair,), dynamic_shapes=({0: Dim.AUTO},), strict=False
            ).run_decompositions({})
    except Exception as exc:  # the tracer's own errors are long; one line says what failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedOpError(
            f"torch.export cannot trace {type(model).__name__}: {first}. Make its forward "
            "traceable (no data-dependent Python control flow) to capture its IPGs"
        ) from None
    gm = exported.module(check_guards=False)
    shapes: dict[str, Shape] = {}

    class _Shapes(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = out.shape
            elif isinstance(out, tuple | list) and any(isinstance(t, torch.Tensor) for t in out):
                shapes[n.name] = tuple(getattr(t, "shape", None) for t in out)
            return out

    with torch.no_grad():
        _Shapes(gm).run(pair)
    return gm, shapes


@contextmanager
def _no_trace_log_propagation() -> Iterator[None]:
    """Keep torch's structured trace log (meant for TORCH_TRACE files) away from the root
    logger while exporting: under a root handler at DEBUG (pytest's, for one) its records make
    an export ten times slower. The shape solver's warnings about a failed trace are silenced
    too: the project's one-line error says what failed."""
    trace_log = logging.getLogger("torch.__trace")
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    propagate, level = trace_log.propagate, shapes_log.level
    trace_log.propagate = False
    shapes_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        trace_log.propagate = propagate
        shapes_log.setLevel(level)


def _module_stack(node: torch.fx.Node) -> tuple[str, str]:
    """(path, class name) of the innermost module that ran `node`."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1][:2]
    return str(path), str(getattr(cls, "__name__", cls)).rsplit(".", 1)[-1]


class PlanBuilder:
    """Walks the traced graph once, applying the registered rule of every node; the rules
    read and write unit maps and create layers through its methods."""

    def __init__(
        self,
        model: nn.Module,
        gm: torch.fx.GraphModule,
        shapes: dict[str, Shape],
        include_input: bool,
    ) -> None:
        self.model, self.gm, self.shapes, self.include_input = model, gm, shapes, include_input
        self.layers: list[Layer] = []
        self.ops: list[CaptureOp] = []
        self.outputs: dict[str, str] = {}
        self.maps: dict[str, UnitMap | tuple[UnitMap | None, ...]] = {}
        self.pending: dict[str, MakeOp] = {}  # weight-layer node -> builds its op, given a BN
        self.folded: set[str] = set()  # module paths of the BatchNorms folded so far
        self.adds = 0

    # -- layers and ops -------------------------------------------------------------------
    def new_layer(self, name: str, kind: LayerKind, units: int) -> Layer:
        if any(layer.name == name for layer in self.layers):
            raise UnsupportedOpError(f"{name} is called more than once; IPG layers are modules")
        offset = sum(x.num_units for x in self.layers)
        layer = Layer(name, kind, units, offset, len(self.layers))
        self.layers.append(layer)
        return layer

    def add_op(self, op: CaptureOp, node: torch.fx.Node, out: str | None = None) -> None:
        """Register `op`; its layer's nodes become the units of `node`'s output, whose values
        (or those of `out`, a folded BatchNorm's output) are the layer's pre-activations."""
        self.ops.append(op)
        self.outputs[op.layer.name] = out or node.name
        first = op.layer.offset
        self.maps[node.name] = UnitMap(torch.arange(first, first + op.layer.num_units))

    def defer(self, node: torch.fx.Node, make: MakeOp) -> None:
        """A weight layer's op is built once its output is used: a BatchNorm may fold into it."""
        self.pending[node.name] = make
        self.maps[node.name] = UnitMap(torch.empty(0, dtype=torch.long))

    def fold(self, src: torch.fx.Node, bn: nn.Module, out: str, path: str) -> bool:
        """Fold `bn` (at module `path`) into the weight layer computing `src` if `bn` is its
        only user and is folded nowhere else (a BatchNorm module called twice would otherwise
        belong to two layers' units)."""
        if src.name not in self.pending or len(src.users) != 1 or path in self.folded:
            return False
        self.folded.add(path)
        self.add_op(replace(self.pending.pop(src.name)(bn), norm=path), src, out)
        return True

    def finish(self, name: str) -> None:
        node = next(n for n in self.gm.graph.nodes if n.name == name)
        self.add_op(self.pending.pop(name)(None), node)

    def add_layer_name(self, node: torch.fx.Node) -> str:
        """`<module path>.add`, `<module path>.add_1`, ... numbered over the whole model."""
        owner = _module_stack(node)[0]
        label = "add" if self.adds == 0 else f"add_{self.adds}"
        self.adds += 1
        return f"{owner}.{label}" if owner else label

    # -- operands -------------------------------------------------------------------------
    def shape(self, arg: torch.fx.Node) -> Shape:
        return self.shapes[arg.name]

    def map(self, arg, node: torch.fx.Node, layout_ok: bool = False) -> UnitMap:
        """The unit map of operand `arg` of `node` (finishing a pending weight layer)."""
        if not isinstance(arg, torch.fx.Node) or arg.name not in self.maps:
            raise self.fail(node, "an operand is not a captured tensor")
        if arg.name in self.pending:
            self.finish(arg.name)
        m = self.maps[arg.name]
        if not isinstance(m, UnitMap):
            raise self.fail(node, "an operand is a tuple of tensors")
        if m.layout and not layout_ok:
            raise self.fail(node, "its input spreads channels over several dims (a reshape)")
        return m

    def set(self, node: torch.fx.Node, m: UnitMap | tuple[UnitMap | None, ...]) -> None:
        self.maps[node.name] = m

    def owned(
        self, node: torch.fx.Node, arg, attr: str, types: tuple[type, ...]
    ) -> tuple[str, nn.Module]:
        """The module owning parameter/buffer `arg` of `node` as its `attr`; only a module's own
        parameters say where a weight layer is (its path becomes the layer name)."""
        target = str(getattr(arg, "target", ""))
        path, _, name = target.rpartition(".")
        if getattr(arg, "op", None) == "get_attr" and name == attr:
            module = self.model.get_submodule(path)
            if isinstance(module, types):
                return path, module
        kinds = "/".join(t.__name__ for t in types)
        raise self.fail(node, f"its {attr} is not the {attr} of a {kinds} module")

    def fail(self, node: torch.fx.Node, why: str = "") -> UnsupportedOpError:
        path, cls = _module_stack(node)
        op = op_name(getattr(node.target, "overloadpacket", node.target))
        return UnsupportedOpError(
            f"IPG capture has no rule for {op} in {cls or type(self.model).__name__} at "
            f"{path or '<top level>'} ({node.name})"
            + (f": {why}" if why else "")
            + ". Rewrite that part with supported ops, or add a rule in "
            f"ipg_gnn/provenance/rules (docs/capture.md). Supported: {supported_ops()}"
        )

    # -- the walk -------------------------------------------------------------------------
    def build(self, input_shape: tuple[int, ...]) -> CapturePlan:
        for node in self.gm.graph.nodes:
            self.visit(node)
        for name in list(self.pending):
            self.finish(name)
        order = {layer.name: i for i, layer in enumerate(self.layers)}
        self.ops.sort(key=lambda op: order[op.layer.name])
        return CapturePlan(self.gm, self.layers, self.ops, self.outputs, input_shape)

    def visit(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            return self.placeholder(node)
        if node.op in ("get_attr", "output") or node.name not in self.shapes:
            return None  # parameters, shape arithmetic, guards: no units
        key = getattr(node.target, "overloadpacket", node.target)
        if node.op != "call_function" or key not in RULES:
            raise self.fail(node)
        return RULES[key].apply(self, node)

    def placeholder(self, node: torch.fx.Node) -> None:
        shape = self.shape(node)[1:]
        per_element = len(shape) == 1 or self._first_weight_op() in LINEAR_OPS
        units = int(torch.tensor(shape).prod()) if per_element else int(shape[0])
        if self.include_input:
            layer = self.new_layer("input", LayerKind.INPUT, units)
            nodes = torch.arange(layer.offset, layer.offset + units)
            self.outputs["input"] = node.name
        else:
            nodes = torch.full((units,), -1, dtype=torch.long)
        self.maps[node.name] = UnitMap(nodes, 1, per_element and len(shape) > 1)

    def _first_weight_op(self):
        for node in self.gm.graph.nodes:
            key = getattr(node.target, "overloadpacket", None)
            if key in LINEAR_OPS or key in CONV_OPS:
                return key
        return None
