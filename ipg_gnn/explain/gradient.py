"""Loss-gradient attribution: the units whose own parameters move a repair loss most.

The flow difference ranks units by how far their flow moves under the contrast; the detector
explainers by what tells the contrast apart. Neither asks what repair needs: which units, if
adapted, lower the model's loss on the contrast inputs (for robustness: cross-entropy on the
adversarial versions at the true labels). To first order one plain gradient step on a set of
parameters lowers a loss by the squared norm of its gradient, so this attributor takes the
loss's gradient averaged over all inputs (`g`) and scores:

- an edge (one weight, summed over a kernel's positions) by `g**2`;
- a unit by the summed `g**2` of every parameter it owns, as a node target of the plan frees
  them: its incoming weights, its bias and a folded BatchNorm's scale and shift; input units
  and residual adds own none and score 0.

A loss may also return a vector [loss, values to hold...] (a fairness repair's group gap and
its overall rates, `loss=selective`): a unit then scores by what is left of its `g` after the
projection onto the held values' gradients (`unit_scores`), an edge still by `g**2`.

The scores index the same dense topology as the flow difference (input features as nodes), so
the plans of the two compare unit for unit. No detector is involved. The ranking's stability
compares the unit scores of the gradients averaged over two random halves of the batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.explain.base import Attribution, AttributionSource, Attributor, ranking_agreement
from ipg_gnn.explain.flow import dense_capture
from ipg_gnn.graphs import Topology
from ipg_gnn.provenance import LayerKind
from ipg_gnn.provenance.ops import CaptureOp
from ipg_gnn.provenance.rules.conv import ungroup

#: A loss of a batch: a scalar, or a vector [loss, values to hold...] (see `unit_scores`).
LossFn = Callable[[nn.Module, Images], torch.Tensor]


def cross_entropy(model: nn.Module, batch: Images) -> torch.Tensor:
    """The contrast loss: cross-entropy of the batch's (contrast) inputs at their labels."""
    return F.cross_entropy(model(batch.x), batch.y)


@contextlib.contextmanager
def differentiable(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode with every parameter requiring grad (a frozen or loaded model
    included), restored afterwards: attribution must not change the model it explains."""
    training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(training)


def mean_gradients(
    model: nn.Module,
    images: Images,
    params: list[nn.Parameter],
    loss_fn: LossFn,
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[list[list[torch.Tensor]], list[list[list[torch.Tensor]]]]:
    """For each value `loss_fn` returns (a scalar, or each entry of a vector), the gradient for
    each of `params`, averaged over `images` (each batch weighted by its size), and the same
    average over each of two random halves of the batches (an empty list when there is a single
    batch): [value][param], and [half][value][param]."""
    starts = list(range(0, len(images), batch_size))
    half = torch.zeros(len(starts), dtype=torch.long)
    half[torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))[::2]] = 1
    sums: list[list[list[torch.Tensor]]] = [[], []]
    counts = [0, 0]
    with differentiable(model):
        for b, i in enumerate(
            tqdm(starts, desc="attribution (loss_gradient)", disable=not progress, leave=False)
        ):
            batch = images.subset(torch.arange(i, min(i + batch_size, len(images))))
            values = loss_fn(model, batch).reshape(-1)
            if b and len(values) != len(sums[0]):
                raise ValueError(f"the loss gave {len(values)} values, {len(sums[0])} before")
            h = int(half[b])
            counts[h] += len(batch)
            for j, value in enumerate(values):
                grads = torch.autograd.grad(value, params, retain_graph=j < len(values) - 1)
                for part in sums:
                    if len(part) <= j:
                        part.append([torch.zeros_like(p) for p in params])
                for total, g in zip(sums[h][j], grads, strict=True):
                    total.add_(g, alpha=len(batch))
    mean = [
        [(a + b) / len(images) for a, b in zip(*value_sums, strict=True)]
        for value_sums in zip(*sums, strict=True)
    ]
    halves = (
        [[[s / n for s in value] for value in part] for part, n in zip(sums, counts, strict=True)]
        if all(counts)
        else []
    )
    return mean, halves


def op_layout(op: CaptureOp, grad: torch.Tensor) -> torch.Tensor:
    """A layer's weight-shaped `grad` in its capture op's (units, input units, K) layout, the
    layout whose (unit, input unit) pairs are the topology's edges."""
    if op.groups == 1:
        return grad.reshape(op.weight.shape)
    return ungroup(grad.reshape(grad.shape[0], grad.shape[1], -1), op.groups)


def edge_scores(
    topology: Topology, op: CaptureOp, weight_score: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the topology's edges into `op`'s layer, their scores): a weight-shaped score
    summed over each edge's kernel positions."""
    src, dst = topology.edge_index
    lo = op.layer.offset
    local = torch.full((topology.num_nodes,), -1, dtype=torch.long)
    valid = op.src_nodes >= 0
    local[op.src_nodes[valid]] = torch.nonzero(valid).flatten()
    into = torch.nonzero((dst >= lo) & (dst < lo + op.layer.num_units)).flatten()
    return into, op_layout(op, weight_score).sum(-1)[dst[into] - lo, local[src[into]]]


def unit_scores(grads: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Per unit, over every parameter it owns (first dimension): the squared norm of the loss's
    gradient `grads[0]` after removing its projection onto the span of the held values'
    gradients `grads[1:]` (none held: the plain squared norm). What remains is the part of one
    gradient step on the unit's own parameters that lowers the loss while, to first order, the
    held values stay where they are; a unit owning no more entries than there are held values
    scores 0."""
    if len(grads) == 1:
        return sum(g.reshape(len(g), -1).pow(2).sum(1) for g in grads[0])
    flat = torch.stack(
        [torch.cat([g.reshape(len(g), -1) for g in value], 1) for value in grads]
    ).double()  # (values, units, owned entries)
    loss, held = flat[0], flat[1:].permute(1, 2, 0)  # held: (units, owned entries, values - 1)
    # float32 gradients: directions closer than their precision count as one
    loss = loss - (held @ (torch.linalg.pinv(held, rtol=1e-6) @ loss.unsqueeze(-1))).squeeze(-1)
    return loss.pow(2).sum(1).float()


def loss_gradient(
    model: nn.Module,
    images: Images,
    loss_fn: LossFn = cross_entropy,
    batch_size: int = 64,
    top_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    score: str = "squared mean cross-entropy gradient",
) -> tuple[Attribution, Topology]:
    """Squared mean gradients of `loss_fn` (default: cross-entropy) over `images`, per weight
    (edge) and per unit's owned parameters (node), on the dense topology of `model`. A
    `loss_fn` that returns a vector [loss, held values...] scores a unit by `unit_scores`'
    residual (an edge, one weight, cannot move the loss and hold a value apart: its score stays
    the loss's squared gradient)."""
    if len(images) == 0:
        raise ValueError("loss-gradient attribution needs at least one input")
    capturer, topology = dense_capture(model, images.x[:1])
    ops = [op for op in capturer.plan.ops if LayerKind(op.kind).is_weight]
    owned = [
        [p for path in op.unit_modules for p in model.get_submodule(path).parameters(False)]
        for op in ops
    ]
    flat = [p for params in owned for p in params]
    mean, halves = mean_gradients(model, images, flat, loss_fn, batch_size, seed, progress)
    node = torch.zeros(topology.num_nodes)
    edge = torch.zeros(topology.edge_index.shape[1])
    half_units = [[], []]
    start = 0
    for op, params in zip(ops, owned, strict=True):
        grads = [value[start : start + len(params)] for value in mean]
        lo, hi = op.layer.offset, op.layer.offset + op.layer.num_units
        node[lo:hi] = unit_scores(grads)
        for part, grads_half in zip(half_units, halves, strict=False):
            part.append(unit_scores([value[start : start + len(params)] for value in grads_half]))
        into, scores = edge_scores(topology, op, grads[0][0] ** 2)  # the weight is first
        edge[into] = scores
        start += len(params)
    stability = (
        ranking_agreement(torch.cat(half_units[0]), torch.cat(half_units[1]), top_fraction)
        if halves
        else {}
    )
    zeros = torch.zeros_like
    return Attribution(
        node, zeros(node), edge, zeros(edge), LossGradient.name, score, stability
    ), topology


class LossGradient(Attributor):
    """`loss_gradient` of one of three losses. `loss=contrast`: cross-entropy on the contrast
    versions of the repair split's inputs (made against the model, at the inputs' true labels),
    or on the contrast population's own inputs where it holds other inputs than the reference
    (e.g. a group). `loss=objective`: the repair objective's loss (`objective.loss`, its
    consistency term off: no units are planned yet) on the repair split's inputs, e.g. a fairness
    repair's group gap, which no single population's cross-entropy carries. `loss=selective`:
    the objective's group gap with each true label's overall rate held (`gap_and_rates` of a
    fairness repair loss): units that can close the gap without lowering every rate, which is
    how a gap penalty closes it on units that cannot tell the groups apart."""

    name = "loss_gradient"

    def __init__(
        self,
        contrast: str,
        loss: str = "contrast",
        batch_size: int = 64,
        top_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(contrast)
        if loss not in ("contrast", "objective", "selective"):
            raise ConfigError(
                f"explainer.loss must be contrast, objective or selective; got {loss!r}"
            )
        if batch_size < 1:
            raise ConfigError(f"explainer.batch_size must be >= 1; got {batch_size}")
        self.loss, self.batch_size = loss, batch_size
        self.top_fraction, self.seed = top_fraction, seed

    def __call__(self, source: AttributionSource) -> tuple[Attribution, Topology]:
        if self.loss == "selective":
            gap_and_rates = getattr(source.repair_loss(), "gap_and_rates", None)
            if gap_and_rates is None:
                raise ConfigError(
                    "explainer.loss=selective holds group rates: it needs objective=fairness"
                )
            return self.attribute(
                source,
                source.inputs(),
                gap_and_rates,
                "the group gap, less its projection on the overall rates' (held)",
            )
        if self.loss == "objective":
            images, repair_loss = source.inputs(), source.repair_loss()
            with repair_loss.attach(source.model):
                return self.attribute(
                    source, images, lambda m, b: repair_loss(m, b, 0), "the repair loss"
                )
        contrast = source.contrast(self.contrast)
        images = source.inputs() if contrast.paired else source.select(contrast)
        made = contrast(source.model, images.x, images.y, source.seed)
        return self.attribute(
            source, Images(made.x, images.y), cross_entropy, f"cross-entropy on {self.contrast}"
        )

    def attribute(
        self, source: AttributionSource, images: Images, loss_fn: LossFn, loss_name: str
    ) -> tuple[Attribution, Topology]:
        """`loss_gradient` of `loss_fn` on `images` with this attributor's settings."""
        return loss_gradient(
            source.model,
            images,
            loss_fn,
            self.batch_size,
            self.top_fraction,
            self.seed,
            score=f"squared mean gradient of {loss_name}",
        )
