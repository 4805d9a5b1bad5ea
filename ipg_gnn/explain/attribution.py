"""Attribution over the GNN detector with PyG's `Explainer`, batched over many IPGs.

Each algorithm scores, for every graph, how much each node (unit) and each edge (weight) drives
the detector towards "adversarial". Averaged over the adversarial graphs of a split and
contrasted with its benign graphs (adversarial mean minus benign mean), the scores say which
units and weights make adversarial inputs flow differently: the raw material of a repair plan.
Attribution needs the edge set shared by all graphs (IPG mode `static` or `dense`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.explain import Explainer
from torch_geometric.explain.algorithm import CaptumExplainer, GNNExplainer, PGExplainer
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from ipg_gnn.graphs import IPGDataset

EXPLAINERS = ("gnnexplainer", "saliency", "integrated_gradients", "pgexplainer")


class _Probabilities(nn.Module):
    """The detector with P(adversarial) as output, which Captum needs for binary tasks."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x, edge_index, edge_attr=None, batch=None):
        return self.detector(x, edge_index, edge_attr, batch).sigmoid()


def make_explainer(
    detector: nn.Module, algorithm: str, epochs: int = 30, lr: float = 0.01
) -> Explainer:
    """A PyG `Explainer` of the detector's graph-level binary output."""
    if algorithm not in EXPLAINERS:
        raise ValueError(f"unknown explainer {algorithm!r}; choose one of {', '.join(EXPLAINERS)}")
    node_mask = "attributes"
    kind = "model"
    if algorithm == "gnnexplainer":
        method = GNNExplainer(epochs=epochs, lr=lr)
    elif algorithm == "saliency":
        method = CaptumExplainer("Saliency")
    elif algorithm == "integrated_gradients":
        method = CaptumExplainer("IntegratedGradients")
    else:
        method, node_mask, kind = PGExplainer(epochs=epochs, lr=lr), None, "phenomenon"
    # A copy per explainer: an algorithm may leave state on the layers it masks (seen with
    # GNNExplainer followed by Captum on one detector), and the caller's detector stays clean.
    return Explainer(
        _Probabilities(copy.deepcopy(detector)).eval(),
        algorithm=method,
        explanation_type=kind,
        node_mask_type=node_mask,
        edge_mask_type="object",
        model_config={
            "mode": "binary_classification",
            "task_level": "graph",
            "return_type": "probs",
        },
    )


@dataclass
class Attribution:
    """Mean node and edge importance on adversarial and on benign graphs, and their contrast."""

    node_adv: torch.Tensor  # (V,)
    node_benign: torch.Tensor
    edge_adv: torch.Tensor  # (E,) over the shared edge set
    edge_benign: torch.Tensor
    explainer: str

    @property
    def node(self) -> torch.Tensor:
        return self.node_adv - self.node_benign

    @property
    def edge(self) -> torch.Tensor:
        return self.edge_adv - self.edge_benign


def _train_pgexplainer(explainer: Explainer, loader: DataLoader, epochs: int) -> None:
    """PGExplainer learns its edge-mask network first, on the graphs it will explain."""
    for epoch in range(epochs):
        for batch in loader:
            target = (
                explainer.model(batch.x, batch.edge_index, batch.edge_attr, batch.batch) > 0.5
            ).long()
            explainer.algorithm.train(
                epoch,
                explainer.model,
                batch.x,
                batch.edge_index,
                target=target,
                edge_attr=batch.edge_attr,
                batch=batch.batch,
            )


def attribute(
    detector: nn.Module,
    dataset: IPGDataset,
    algorithm: str = "saliency",
    batch_size: int = 64,
    epochs: int = 30,
    lr: float = 0.01,
    progress: bool = True,
) -> Attribution:
    """Node and edge importances of every graph of `dataset`, averaged per class."""
    if dataset.dynamic:
        raise ValueError(
            "attribution needs the edge set shared by all graphs: capture the IPGs "
            "with ipg=static or ipg=dense"
        )
    labels = dataset.labels
    if labels.min() == labels.max():
        raise ValueError("attribution contrasts adversarial with benign graphs: it needs both")
    explainer = make_explainer(detector, algorithm, epochs, lr)
    loader = DataLoader(dataset, batch_size=batch_size)
    if algorithm == "pgexplainer":
        _train_pgexplainer(explainer, loader, epochs)
    num_nodes, num_edges = dataset.topology.num_nodes, dataset.topology.edge_index.shape[1]
    nodes, edges = [], []
    for batch in tqdm(loader, desc=f"attribution ({algorithm})", disable=not progress, leave=False):
        kwargs = {"edge_attr": batch.edge_attr, "batch": batch.batch}
        if algorithm == "pgexplainer":
            kwargs["target"] = (explainer.model(batch.x, batch.edge_index, **kwargs) > 0.5).long()
        explanation = explainer(batch.x, batch.edge_index, **kwargs)
        edge = explanation.edge_mask.detach().abs()
        node_mask = explanation.get("node_mask")
        if node_mask is None:  # PGExplainer scores edges only: a node gets its incoming edges'
            node = torch.zeros(batch.num_nodes).index_add_(0, batch.edge_index[1], edge)
        else:
            node = node_mask.detach().abs().sum(-1)
        nodes.append(node.reshape(-1, num_nodes))
        edges.append(edge.reshape(-1, num_edges))
    node_all, edge_all = torch.cat(nodes), torch.cat(edges)
    adv = labels.bool()
    return Attribution(
        node_all[adv].mean(0),
        node_all[~adv].mean(0),
        edge_all[adv].mean(0),
        edge_all[~adv].mean(0),
        algorithm,
    )
