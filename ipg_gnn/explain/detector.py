"""Attribution over the GNN detector with PyG's `Explainer`, batched over many IPGs.

Each algorithm scores, for every graph, how much each node (unit) and each edge (weight) drives
the detector towards the contrast population. Averaged over a split's contrast graphs and
contrasted with its reference graphs (contrast mean minus reference mean), the scores say which
units and weights make the contrast inputs flow differently: the raw material of a repair plan.
Attribution needs the edge set shared by all graphs (IPG mode `static` or `dense`).

One class per algorithm, as PyG's own `ExplainerAlgorithm`s: `Saliency`, `IntegratedGradients`
(Captum), `GNNExplainer`, `PGExplainer`; and `PairedIntegratedGradients`, which explains the
detector's logit along the path from each input's reference IPG to its contrast IPG (the saturated
probability of a near-perfect detector has vanishing gradients; the logit's change does not).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.explain import Explainer
from torch_geometric.explain.algorithm import (
    CaptumExplainer,
    ExplainerAlgorithm,
)
from torch_geometric.explain.algorithm import (
    GNNExplainer as PygGNNExplainer,
)
from torch_geometric.explain.algorithm import (
    PGExplainer as PygPGExplainer,
)
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from ipg_gnn.errors import ConfigError
from ipg_gnn.explain.base import Attribution, AttributionSource, Attributor, ranking_agreement
from ipg_gnn.graphs import IPGDataset, Topology


class _Probabilities(nn.Module):
    """The detector with P(contrast) as output, which Captum needs for binary tasks."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x, edge_index, edge_attr=None, batch=None):
        return self.detector(x, edge_index, edge_attr, batch).sigmoid()


class DetectorAttributor(Attributor):
    """Explains the train run's detector on the repair split's reference and contrast IPGs;
    `batch_size` graphs at a time."""

    node_mask_type: str | None = "attributes"
    explanation_type = "model"

    def __init__(self, contrast: str, batch_size: int = 64) -> None:
        super().__init__(contrast)
        if batch_size < 1:
            raise ValueError(f"explainer batch_size must be >= 1; got {batch_size}")
        self.batch_size = batch_size

    def algorithm(self) -> ExplainerAlgorithm:
        raise NotImplementedError

    def explainer(self, detector: nn.Module) -> Explainer:
        """A PyG `Explainer` of the detector's graph-level binary output."""
        # A copy per explainer: an algorithm may leave state on the layers it masks (seen with
        # GNNExplainer followed by Captum on one detector), and the caller's detector stays clean.
        return Explainer(
            _Probabilities(copy.deepcopy(detector)).eval(),
            algorithm=self.algorithm(),
            explanation_type=self.explanation_type,
            node_mask_type=self.node_mask_type,
            edge_mask_type="object",
            model_config={
                "mode": "binary_classification",
                "task_level": "graph",
                "return_type": "probs",
            },
        )

    def prepare(self, explainer: Explainer, loader: DataLoader) -> None:
        """Anything the algorithm must learn before explaining (nothing by default)."""

    def explain_kwargs(self, explainer: Explainer, batch) -> dict:
        return {"edge_attr": batch.edge_attr, "batch": batch.batch}

    def __call__(self, source: AttributionSource) -> tuple[Attribution, Topology]:
        dataset = source.ipg_dataset(self.contrast)
        detector = source.detector(dataset.topology.num_nodes)
        return self.attribute(detector, dataset), dataset.topology

    def attribute(
        self, detector: nn.Module, dataset: IPGDataset, progress: bool = True
    ) -> Attribution:
        """Node and edge importances of every graph of `dataset`, averaged per population."""
        if dataset.dynamic:
            raise ValueError(
                "attribution needs the edge set shared by all graphs: capture the IPGs "
                "with ipg=static or ipg=dense"
            )
        labels = dataset.labels
        if labels.min() == labels.max():
            raise ValueError("attribution contrasts two populations' graphs: it needs both")
        explainer = self.explainer(detector)
        loader = DataLoader(dataset, batch_size=self.batch_size)
        self.prepare(explainer, loader)
        num_nodes, num_edges = dataset.topology.num_nodes, dataset.topology.edge_index.shape[1]
        nodes, edges = [], []
        for batch in tqdm(
            loader, desc=f"attribution ({self.name})", disable=not progress, leave=False
        ):
            explanation = explainer(
                batch.x, batch.edge_index, **self.explain_kwargs(explainer, batch)
            )
            edge = explanation.edge_mask.detach().abs()
            node_mask = explanation.get("node_mask")
            if node_mask is None:  # edges only (PGExplainer): a node gets its incoming edges'
                node = torch.zeros(batch.num_nodes).index_add_(0, batch.edge_index[1], edge)
            else:
                node = node_mask.detach().abs().sum(-1)
            nodes.append(node.reshape(-1, num_nodes))
            edges.append(edge.reshape(-1, num_edges))
        node_all, edge_all = torch.cat(nodes), torch.cat(edges)
        contrast = labels.bool()
        return Attribution(
            node_all[contrast].mean(0),
            node_all[~contrast].mean(0),
            edge_all[contrast].mean(0),
            edge_all[~contrast].mean(0),
            self.name,
            "contrast - reference importance",
        )


class Saliency(DetectorAttributor):
    """|gradient| of the detector's output with respect to node features and edge masks."""

    name = "saliency"

    def algorithm(self) -> ExplainerAlgorithm:
        return CaptumExplainer("Saliency")


class IntegratedGradients(DetectorAttributor):
    """Captum's integrated gradients from an all-zero baseline."""

    name = "integrated_gradients"

    def algorithm(self) -> ExplainerAlgorithm:
        return CaptumExplainer("IntegratedGradients")


class GNNExplainer(DetectorAttributor):
    """Soft node-feature and edge masks optimised per batch (`epochs`, `lr`)."""

    name = "gnnexplainer"

    def __init__(
        self, contrast: str, batch_size: int = 64, epochs: int = 30, lr: float = 0.01
    ) -> None:
        super().__init__(contrast, batch_size)
        self.epochs, self.lr = epochs, lr

    def algorithm(self) -> ExplainerAlgorithm:
        return PygGNNExplainer(epochs=self.epochs, lr=self.lr)


class PGExplainer(GNNExplainer):
    """A learned edge-mask network (edges only), trained on the graphs it then explains."""

    name = "pgexplainer"
    node_mask_type = None
    explanation_type = "phenomenon"

    def algorithm(self) -> ExplainerAlgorithm:
        return PygPGExplainer(epochs=self.epochs, lr=self.lr)

    @staticmethod
    def _target(explainer: Explainer, batch) -> torch.Tensor:
        return (
            explainer.model(batch.x, batch.edge_index, batch.edge_attr, batch.batch) > 0.5
        ).long()

    def prepare(self, explainer: Explainer, loader: DataLoader) -> None:
        for epoch in range(self.epochs):
            for batch in loader:
                explainer.algorithm.train(
                    epoch,
                    explainer.model,
                    batch.x,
                    batch.edge_index,
                    target=self._target(explainer, batch),
                    edge_attr=batch.edge_attr,
                    batch=batch.batch,
                )

    def explain_kwargs(self, explainer: Explainer, batch) -> dict:
        return {
            **super().explain_kwargs(explainer, batch),
            "target": self._target(explainer, batch),
        }


def paired_graphs(dataset: IPGDataset) -> torch.Tensor:
    """(P, 2) dataset indices of (reference graph, contrast graph) of the same input."""
    meta = dataset.meta
    reference = {
        int(s): i for i, s in enumerate(meta["source_index"].tolist()) if not meta["is_contrast"][i]
    }
    pairs = [
        (reference[int(s)], i)
        for i, s in enumerate(meta["source_index"].tolist())
        if meta["is_contrast"][i] and int(s) in reference
    ]
    if not pairs:
        raise ValueError("paired attribution needs inputs with both a reference and a contrast IPG")
    return torch.tensor(pairs)


def path_integrated_gradients(
    detector: nn.Module, reference: Batch, contrast: Batch, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients of the detector's logit on the straight path from `reference` to
    `contrast` graphs (same edge set), over node features and edge attributes together (midpoint
    rule, `steps` points). Per graph the attributions add up to logit(contrast) -
    logit(reference), up to the rule's error. Returns node (nodes, features) and edge (edges,
    features) attributions."""
    dx, de = contrast.x - reference.x, contrast.edge_attr - reference.edge_attr
    grad_x, grad_e = torch.zeros_like(dx), torch.zeros_like(de)
    for step in range(steps):
        alpha = (step + 0.5) / steps
        x = (reference.x + alpha * dx).requires_grad_(True)
        e = (reference.edge_attr + alpha * de).requires_grad_(True)
        logit = detector(x, reference.edge_index, e, reference.batch).sum()
        gx, ge = torch.autograd.grad(logit, (x, e))
        grad_x += gx
        grad_e += ge
    return dx * grad_x / steps, de * grad_e / steps


class PairedIntegratedGradients(DetectorAttributor):
    """Contrastive attribution: integrated gradients of the detector's logit from each input's
    reference IPG (the baseline) to its contrast IPG, so a unit's or weight's score is its share
    of the logit change that input's contrast version causes. `aggregate`: how per-pair scores
    are averaged (`abs`: mean magnitude; `signed`: mean signed share, positive towards the
    contrast). `stability` of the ranking: Spearman correlation of the unit scores of two
    random halves of the pairs, and the overlap of their top `top_fraction` units."""

    name = "paired_ig"

    def __init__(
        self,
        contrast: str,
        batch_size: int = 64,
        steps: int = 32,
        aggregate: str = "abs",
        top_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(contrast, batch_size)
        if aggregate not in ("abs", "signed"):
            raise ValueError(f"paired_ig aggregate must be abs or signed; got {aggregate!r}")
        if steps < 1:
            raise ValueError(f"paired_ig steps must be >= 1; got {steps}")
        self.steps, self.aggregate = steps, aggregate
        self.top_fraction, self.seed = top_fraction, seed

    def __call__(self, source: AttributionSource) -> tuple[Attribution, Topology]:
        if not source.contrast(self.contrast).paired:
            raise ConfigError(
                f"explainer=paired_ig pairs each input's reference and contrast IPGs, but the "
                f"contrast population {self.contrast!r} holds other inputs than the reference "
                "(e.g. a group): use explainer=flow_difference or a detector explainer"
            )
        return super().__call__(source)

    def attribute(
        self, detector: nn.Module, dataset: IPGDataset, progress: bool = True
    ) -> Attribution:
        if dataset.dynamic:
            raise ValueError("paired attribution needs the edge set shared by all graphs")
        pairs = paired_graphs(dataset)
        detector = copy.deepcopy(detector).eval()
        num_nodes, num_edges = dataset.topology.num_nodes, dataset.topology.edge_index.shape[1]
        nodes, edges = [], []
        for chunk in tqdm(
            pairs.split(self.batch_size), desc="attribution (paired_ig)", disable=not progress,
            leave=False,
        ):  # fmt: skip
            reference = Batch.from_data_list([dataset[int(i)] for i in chunk[:, 0]])
            contrast = Batch.from_data_list([dataset[int(i)] for i in chunk[:, 1]])
            node, edge = path_integrated_gradients(detector, reference, contrast, self.steps)
            nodes.append(node.sum(-1).reshape(-1, num_nodes))
            edges.append(edge.sum(-1).reshape(-1, num_edges))
        node_all, edge_all = torch.cat(nodes), torch.cat(edges)
        if self.aggregate == "abs":
            node_all, edge_all = node_all.abs(), edge_all.abs()
        return Attribution(
            node_all.mean(0),
            torch.zeros(num_nodes),
            edge_all.mean(0),
            torch.zeros(num_edges),
            self.name,
            f"share of the detector logit's change, reference to contrast ({self.aggregate})",
            ranking_stability(node_all, self.top_fraction, self.seed),
        )


def ranking_stability(
    scores: torch.Tensor, top_fraction: float, seed: int
) -> dict[str, float | None]:
    """How far a ranking from per-item `scores` (items, units) depends on which items were
    used: Spearman correlation of the unit means of two random halves of the items, and the
    share of one half's top `top_fraction` units in the other's."""
    if len(scores) < 2:
        return {}
    order = torch.randperm(len(scores), generator=torch.Generator().manual_seed(seed))
    half = len(scores) // 2
    return ranking_agreement(
        scores[order[:half]].mean(0), scores[order[half:]].mean(0), top_fraction
    )
