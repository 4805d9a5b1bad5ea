"""Loss-gradient attribution: the units whose own parameters move the contrast loss most.

The flow difference ranks units by how far their flow moves under the contrast; the detector
explainers by what tells the contrast apart. Neither asks what repair needs: which units, if
adapted, lower the model's loss on the contrast inputs (for robustness: cross-entropy on the
adversarial versions at the true labels). To first order one gradient step on a unit's incoming
weights and bias lowers that loss by the squared norm of their gradient, so this attributor
scores:

- an edge (one weight, summed over a kernel's positions) by its squared loss gradient, averaged
  over batches of the repair split;
- a unit by the summed squared gradient of its incoming weights and bias (what a plan of that
  unit trains); input units and residual adds have no parameters and score 0.

The scores index the same dense topology as the flow difference (input features as nodes), so
the plans of the two compare unit for unit. No detector is involved.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.explain.base import Attribution, AttributionSource, Attributor
from ipg_gnn.explain.detector import ranking_stability
from ipg_gnn.explain.flow import dense_capture
from ipg_gnn.graphs import Topology
from ipg_gnn.provenance import LayerKind
from ipg_gnn.provenance.rules.conv import ungroup


def s_form(op, grad: torch.Tensor) -> torch.Tensor:
    """A module's weight-shaped `grad` in its capture op's (units, input units, K) layout."""
    if op.groups == 1:
        return grad.reshape(op.weight.shape)
    return ungroup(grad.reshape(grad.shape[0], grad.shape[1], -1), op.groups)


def cross_entropy(model: nn.Module, batch: Images) -> torch.Tensor:
    return F.cross_entropy(model(batch.x), batch.y)


def squared_loss_gradients(
    model: nn.Module,
    images: Images,
    modules: dict[str, nn.Module],
    loss_fn: Callable[[nn.Module, Images], torch.Tensor],
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor | None]], torch.Tensor]:
    """Per module: the squared gradient of `loss_fn` for its weight and bias, averaged over
    batches of `images`; and each batch's per-unit score (batches, modules' units in order)
    for the stability of the ranking."""
    model = model.eval()
    params = [(name, m.weight, m.bias) for name, m in modules.items()]
    sums = {name: (torch.zeros_like(w), None if b is None else torch.zeros_like(b))
            for name, w, b in params}  # fmt: skip
    per_batch = []
    batches = range(0, len(images), batch_size)
    for i in tqdm(batches, desc="attribution (loss_gradient)", disable=not progress, leave=False):
        loss = loss_fn(model, images.subset(torch.arange(i, min(i + batch_size, len(images)))))
        flat = [p for _, w, b in params for p in (w, b) if p is not None]
        grads = iter(torch.autograd.grad(loss, flat))
        units = []
        for name, _, b in params:
            gw = next(grads) ** 2
            gb = None if b is None else next(grads) ** 2
            sums[name][0].add_(gw)
            if gb is not None:
                sums[name][1].add_(gb)
            units.append(gw.reshape(len(gw), -1).sum(1) + (0 if gb is None else gb))
        per_batch.append(torch.cat(units))
    n = len(batches)
    mean = {name: (w / n, None if b is None else b / n) for name, (w, b) in sums.items()}
    return mean, torch.stack(per_batch)


def loss_gradient(
    model: nn.Module,
    images: Images,
    loss_fn: Callable[[nn.Module, Images], torch.Tensor] = cross_entropy,
    batch_size: int = 64,
    chunk_size: int = 256,
    top_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    score: str = "squared cross-entropy gradient",
) -> tuple[Attribution, Topology]:
    """Squared gradients of `loss_fn` (default: cross-entropy) on `images` per weight (edge) and
    per unit's incoming weights and bias (node), on the dense topology of `model`."""
    if len(images) == 0:
        raise ValueError("loss-gradient attribution needs at least one input")
    if batch_size < 1:
        raise ValueError(f"explainer batch_size must be >= 1; got {batch_size}")
    capturer, topology = dense_capture(model, images.x, chunk_size)
    ops = [op for op in capturer.plan.ops if LayerKind(op.kind).is_weight]
    modules = {op.layer.name: model.get_submodule(op.layer.name) for op in ops}
    grads, per_batch = squared_loss_gradients(model, images, modules, loss_fn, batch_size, progress)
    node = torch.zeros(topology.num_nodes)
    edge = torch.zeros(topology.edge_index.shape[1])
    batch_node = torch.zeros(len(per_batch), topology.num_nodes)
    src, dst = topology.edge_index
    start = 0
    for op in ops:
        lo, fo = op.layer.offset, op.layer.num_units
        gw, gb = grads[op.layer.name]
        node[lo : lo + fo] = gw.reshape(fo, -1).sum(1) + (0 if gb is None else gb)
        batch_node[:, lo : lo + fo] = per_batch[:, start : start + fo]
        start += fo
        local = torch.full((topology.num_nodes,), -1, dtype=torch.long)
        valid = op.src_nodes >= 0
        local[op.src_nodes[valid]] = torch.nonzero(valid).flatten()
        mine = torch.nonzero((dst >= lo) & (dst < lo + fo)).flatten()
        edge[mine] = s_form(op, gw).sum(-1)[dst[mine] - lo, local[src[mine]]]
    zeros = torch.zeros_like
    attribution = Attribution(
        node,
        zeros(node),
        edge,
        zeros(edge),
        LossGradient.name,
        score,
        ranking_stability(batch_node, top_fraction, seed),
    )
    return attribution, topology


class LossGradient(Attributor):
    """`loss_gradient` of one of two losses. `loss=contrast`: cross-entropy on the contrast
    versions of the repair split's inputs (made against the model, at the inputs' true labels),
    or on the contrast population's own inputs where it holds other inputs than the reference
    (e.g. a group). `loss=objective`: the repair's own objective loss (its consistency term off:
    no units are planned yet) on the repair split's inputs, e.g. a fairness repair's group gap,
    which no single population's cross-entropy carries."""

    name = "loss_gradient"

    def __init__(
        self,
        contrast: str,
        loss: str = "contrast",
        batch_size: int = 64,
        chunk_size: int = 256,
        top_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(contrast)
        if loss not in ("contrast", "objective"):
            raise ConfigError(f"explainer.loss must be contrast or objective; got {loss!r}")
        if batch_size < 1:
            raise ConfigError(f"explainer.batch_size must be >= 1; got {batch_size}")
        self.loss, self.batch_size, self.chunk_size = loss, batch_size, chunk_size
        self.top_fraction, self.seed = top_fraction, seed

    def __call__(self, source: AttributionSource) -> tuple[Attribution, Topology]:
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
        self,
        source: AttributionSource,
        images: Images,
        loss_fn: Callable[[nn.Module, Images], torch.Tensor],
        loss_name: str,
    ) -> tuple[Attribution, Topology]:
        return loss_gradient(
            source.model,
            images,
            loss_fn,
            self.batch_size,
            self.chunk_size,
            self.top_fraction,
            self.seed,
            score=f"squared gradient of {loss_name}",
        )
