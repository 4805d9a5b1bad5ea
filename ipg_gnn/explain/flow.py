"""Flow-difference attribution: the units and weights that carry the change a contrast makes.

The detector explainers score only the edges an IPG captured (static mode keeps the top `k`
incoming edges per unit, so most of a first layer's weights are never seen). This explainer
compares, input by input, the dense IPG of a reference input with the dense IPG of its contrast
version (for robustness: its adversarial version), with the input features as nodes so that
every weight is an edge:

- an edge (one weight) scores the mean |change of its contribution|;
- a unit scores the summed change over its outgoing edges: what it passes on to the next layer
  (a unit with no outgoing edge, an output, scores the mean |change of its value|).

With `relative`, every score is divided by the reference inputs' mean |flow| at the same
edge (a unit: over its outgoing edges): the change per unit of the signal a weight carries. A
weight that carries much of the clean signal scores high by the absolute change alone, and
adapting it costs clean accuracy; the relative score ranks first what carries the contrast
with little signal (on the Fashion-MNIST CNN the absolute ranking's kernel slices sat at or
below random plans, docs/budget_sweep.md).

The pairing is the contrast with the reference inputs, so the reference means of the
`Attribution` are 0. Populations of different inputs (groups) cannot pair: for them the score
is the gap between the populations' mean flows at each true label (`group_flow_difference`).
No detector is involved: on the MNIST MLP this ranking beat random plans on the repair split's
validation part where the detector explainers did not (see the README).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ipg_gnn.data import Images
from ipg_gnn.explain.base import Attribution, AttributionSource, Attributor
from ipg_gnn.graphs import Topology
from ipg_gnn.provenance import CaptureConfig, IPGCapture
from ipg_gnn.runs.keys import model_fingerprint


def dense_capture(model: nn.Module, example: torch.Tensor, chunk_size: int = 256):
    """A capturer of dense IPGs with input features as nodes (every weight an edge), and its
    topology; `chunk_size` inputs per capture (unused by a caller that needs the topology
    alone)."""
    config = CaptureConfig(mode="dense", include_input=True, chunk_size=chunk_size)
    capturer = IPGCapture(model, example[:1], config)
    return capturer, Topology.from_capture(capturer, model_fingerprint(model))


def flow_attribution(
    topology: Topology,
    edge: torch.Tensor,
    value: torch.Tensor,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Attribution:
    """Per-edge scores and per-unit value scores as an `Attribution`: a unit scores the sum over
    its outgoing edges (what it passes on), a unit with none (an output) its value score. With
    `reference` (the reference inputs' mean |flow| per edge and unit), each score is divided by
    its reference flow (a unit's: summed over the same outgoing edges)."""
    source = topology.edge_index[0]
    node = torch.zeros(topology.num_nodes).index_add_(0, source, edge)
    sinks = torch.ones(topology.num_nodes, dtype=torch.bool)
    sinks[source] = False
    node[sinks] = value[sinks]
    score = "mean |flow change|"
    if reference is not None:
        ref_edge, ref_value = reference
        ref_node = torch.zeros(topology.num_nodes).index_add_(0, source, ref_edge)
        ref_node[sinks] = ref_value[sinks]
        node, edge = relative_to(node, ref_node), relative_to(edge, ref_edge)
        score += " / mean |reference flow|"
    zeros = torch.zeros_like
    return Attribution(node, zeros(node), edge, zeros(edge), FlowDifference.name, score)


def relative_to(change: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`change / reference`, the reference floored at a millionth of its mean so that a weight
    with no reference flow (e.g. from an always-zero pixel) ranks high without dividing by 0."""
    return change / reference.clamp_min(1e-6 * float(reference.mean()) + 1e-30)


def flow_difference(
    model: nn.Module,
    benign: torch.Tensor,
    adversarial: torch.Tensor,
    chunk_size: int = 256,
    progress: bool = True,
    relative: bool = False,
) -> tuple[Attribution, Topology]:
    """Mean |flow change| per edge and per unit between the dense IPGs of `benign` inputs and
    of their contrast (`adversarial`) versions (same order), `relative` to the benign mean
    |flow| or not, and the dense topology they are scored on."""
    if benign.shape != adversarial.shape:
        raise ValueError(
            f"benign inputs {tuple(benign.shape)} and adversarial inputs "
            f"{tuple(adversarial.shape)} must pair one to one"
        )
    if len(benign) == 0:
        raise ValueError("flow difference needs at least one benign/adversarial pair")
    capturer, topology = dense_capture(model, benign, chunk_size)
    edge, value = torch.zeros(topology.edge_index.shape[1]), torch.zeros(topology.num_nodes)
    ref_edge, ref_value = torch.zeros_like(edge), torch.zeros_like(value)
    for i in tqdm(
        range(0, len(benign), chunk_size),
        desc="attribution (flow_difference)",
        disable=not progress,
        leave=False,
    ):
        clean = capturer(benign[i : i + chunk_size])
        attacked = capturer(adversarial[i : i + chunk_size])
        edge += (attacked.contribution - clean.contribution).abs().sum(0)
        value += (attacked.x[..., 0] - clean.x[..., 0]).abs().sum(0)
        if relative:
            ref_edge += clean.contribution.abs().sum(0)
            ref_value += clean.x[..., 0].abs().sum(0)
    reference = (ref_edge / len(benign), ref_value / len(benign)) if relative else None
    return flow_attribution(topology, edge / len(benign), value / len(benign), reference), topology


def mean_flow(
    capturer: IPGCapture, images: Images, label: int, chunk_size: int, absolute: bool = False
) -> list[torch.Tensor]:
    """Mean edge contributions and unit values of the dense IPGs of `images` of true `label`;
    with `absolute`, then the means of their absolute values (what a relative score divides
    by)."""
    x = images.x[images.y == label]
    transforms = (lambda flow: flow, torch.abs) if absolute else (lambda flow: flow,)
    sums = [0.0] * (2 * len(transforms))
    for i in range(0, len(x), chunk_size):
        ipg = capturer(x[i : i + chunk_size])
        for k, flow in enumerate((ipg.contribution, ipg.x[..., 0])):
            for t, transform in enumerate(transforms):
                sums[k + 2 * t] = sums[k + 2 * t] + transform(flow).sum(0)
    return [total / len(x) for total in sums]


def group_flow_difference(
    model: nn.Module,
    reference: Images,
    contrast: Images,
    chunk_size: int = 256,
    relative: bool = False,
) -> tuple[Attribution, Topology]:
    """|difference of the mean flow| of two populations of different inputs (e.g. two groups),
    per edge and unit, taken within each true label and averaged over the labels both hold: a
    gap at a fixed label is where an equal-opportunity violation comes from, while a gap of the
    unconditioned means would mostly say that the groups' base rates differ. `relative`: each
    gap divided by the reference population's mean |flow| (flows of opposite sign must not
    cancel in the scale), averaged over the labels the same way."""
    labels = sorted(set(reference.y.tolist()) & set(contrast.y.tolist()))
    if not labels:
        raise ValueError("the two populations share no true label: no flow gap to measure")
    capturer, topology = dense_capture(model, reference.x, chunk_size)
    edge, value = torch.zeros(topology.edge_index.shape[1]), torch.zeros(topology.num_nodes)
    ref_edges, ref_values = torch.zeros_like(edge), torch.zeros_like(value)
    for label in labels:
        ref = mean_flow(capturer, reference, label, chunk_size, absolute=relative)
        con_edge, con_value = mean_flow(capturer, contrast, label, chunk_size)
        edge += (con_edge - ref[0]).abs() / len(labels)
        value += (con_value - ref[1]).abs() / len(labels)
        if relative:
            ref_edges += ref[2] / len(labels)
            ref_values += ref[3] / len(labels)
    scale = (ref_edges, ref_values) if relative else None
    return flow_attribution(topology, edge, value, scale), topology


class FlowDifference(Attributor):
    """`flow_difference` on the repair split and its contrast versions made against the model
    (a paired contrast), or `group_flow_difference` of the repair split's reference and
    contrast populations (populations of different inputs); `chunk_size` inputs per dense
    capture; `relative`: scores per unit of reference flow (module docstring)."""

    name = "flow_difference"

    def __init__(self, contrast: str, chunk_size: int = 256, relative: bool = False) -> None:
        super().__init__(contrast)
        if chunk_size < 1:
            raise ValueError(f"explainer chunk_size must be >= 1; got {chunk_size}")
        self.chunk_size, self.relative = chunk_size, relative

    def __call__(self, source: AttributionSource) -> tuple[Attribution, Topology]:
        contrast = source.contrast(self.contrast)
        if not contrast.paired:
            reference, members = source.select(source.reference()), source.select(contrast)
            made = contrast(source.model, members.x, members.y, source.seed)
            return group_flow_difference(
                source.model, reference, Images(made.x, members.y), self.chunk_size, self.relative
            )
        images = source.inputs()
        shifted = contrast(source.model, images.x, images.y, source.seed)
        return flow_difference(
            source.model, images.x, shifted.x, self.chunk_size, relative=self.relative
        )
