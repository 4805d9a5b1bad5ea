"""GNN graph classifiers over IPGs, built from PyG `MessagePassing` layers so that PyG's
`Explainer` can mask their edges.

Node order is fixed per model, so node `k` of every graph is the same unit: node features are
standardised per unit (with statistics of the training graphs, stored as buffers) and a learned
node-identity embedding can be added. Edge contributions span orders of magnitude across layers,
so they pass through `asinh` (a signed log) before a global standardisation.

Readouts: `mean`, `max`, `sum` pooling, `order`, which keeps unit identity by concatenating
a small projection of every node's state in node order, so the head can weigh units one by one,
and `true_class`, the state of the node that node feature `TRUE_CLASS_FEATURE` marks (the true
class's output unit, in graphs that carry label features: `ipg_gnn.graphs.label_node_features`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch_geometric.nn import (
    GATv2Conv,
    GINEConv,
    GraphConv,
    MessagePassing,
    global_add_pool,
    global_max_pool,
    global_mean_pool,
)

from ipg_gnn.provenance import NODE_FEATURES

CONVS = ("graphconv", "gine", "gatv2")
POOLS = {"mean": global_mean_pool, "max": global_max_pool, "sum": global_add_pool}
# `order` readout: every node's state projected to ORDER_DIM numbers, concatenated in node order
# (possible because node k is the same unit in every IPG of a model).
READOUTS = (*POOLS, "order", "true_class")
#: The node feature (column) that marks the true class's output unit when graphs carry label
#: features: the first one after the capture's own (`ipg_gnn.provenance.NODE_FEATURES`).
TRUE_CLASS_FEATURE = len(NODE_FEATURES)


def _edge_transform(edge_attr: torch.Tensor) -> torch.Tensor:
    return torch.asinh(edge_attr)


class IPGClassifier(nn.Module):
    """Reference (0) vs contrast (1) IPG classifier; returns one logit per graph.

    `conv`: `graphconv` (GraphConv weighted by the edge contribution), `gine` (GINEConv with both
    edge attributes) or `gatv2` (GATv2Conv attending over both edge attributes)."""

    def __init__(
        self,
        num_nodes: int,
        node_features: int = 4,
        edge_features: int = 2,
        conv: str = "graphconv",
        hidden: int = 32,
        layers: int = 2,
        dropout: float = 0.1,
        node_embedding: int = 16,
        heads: int = 4,
        pooling: Sequence[str] = ("mean", "max"),
        order_dim: int = 2,
    ) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"unknown GNN layer {conv!r}; choose one of {', '.join(CONVS)}")
        unknown = set(pooling) - set(READOUTS)
        if unknown or not pooling:
            raise ValueError(
                f"pooling must be a non-empty subset of {list(READOUTS)}; got {list(pooling)}"
            )
        if "true_class" in pooling and node_features <= TRUE_CLASS_FEATURE:
            raise ValueError(
                f"the true_class readout needs label node features (column {TRUE_CLASS_FEATURE} "
                f"marks the true class's output unit); got {node_features} node features"
            )
        if conv == "gatv2" and hidden % heads:
            raise ValueError(f"gatv2 needs hidden ({hidden}) divisible by heads ({heads})")
        self.num_nodes, self.conv_type, self.pooling = num_nodes, conv, tuple(pooling)
        self.register_buffer("x_mean", torch.zeros(num_nodes, node_features))
        self.register_buffer("x_std", torch.ones(num_nodes, node_features))
        self.register_buffer("e_mean", torch.zeros(edge_features))
        self.register_buffer("e_std", torch.ones(edge_features))
        self.embedding = nn.Embedding(num_nodes, node_embedding) if node_embedding else None
        self.input = nn.Linear(node_features + node_embedding, hidden)
        self.convs = nn.ModuleList(
            [self._conv(conv, hidden, edge_features, heads) for _ in range(layers)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers)])
        self.dropout = nn.Dropout(dropout)
        self.order = nn.Linear(hidden, order_dim) if "order" in self.pooling else None
        pooled = hidden * len(set(self.pooling) & {*POOLS, "true_class"})
        pooled += num_nodes * order_dim if self.order is not None else 0
        self.head = nn.Sequential(
            nn.Linear(pooled, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    @staticmethod
    def _conv(conv: str, hidden: int, edge_features: int, heads: int) -> MessagePassing:
        if conv == "graphconv":
            return GraphConv(hidden, hidden, aggr="add")
        if conv == "gine":
            mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            return GINEConv(mlp, edge_dim=edge_features)
        return GATv2Conv(hidden, hidden // heads, heads=heads, edge_dim=edge_features)

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor, edge_attr: torch.Tensor) -> IPGClassifier:
        """Per-unit node statistics from `x` (graphs, nodes, features) and global edge
        statistics from `edge_attr` (edges, features), all of training graphs."""
        if x.shape[1:] != self.x_mean.shape:
            raise ValueError(
                f"node features {tuple(x.shape[1:])} do not match this detector's "
                f"{tuple(self.x_mean.shape)} (nodes, features)"
            )
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(x.std(0).nan_to_num(1.0).clamp_min(1e-4))
        e = _edge_transform(edge_attr)
        self.e_mean.copy_(e.mean(0))
        self.e_std.copy_(e.std(0).nan_to_num(1.0).clamp_min(1e-4))
        return self

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_attr: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.shape[0] % self.num_nodes:
            raise ValueError(
                f"{x.shape[0]} nodes is not a whole number of IPGs of "
                f"{self.num_nodes} nodes: graphs from another model?"
            )
        node_id = torch.arange(x.shape[0], device=x.device) % self.num_nodes
        if batch is None:
            batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        h = (x - self.x_mean[node_id]) / self.x_std[node_id]
        if self.embedding is not None:
            h = torch.cat([h, self.embedding(node_id)], dim=1)
        h = self.input(h)
        e = (_edge_transform(edge_attr) - self.e_mean) / self.e_std
        for conv, norm in zip(self.convs, self.norms, strict=True):
            if self.conv_type == "graphconv":
                out = conv(h, edge_index, edge_weight=e[:, 0])
            else:
                out = conv(h, edge_index, e)
            h = h + self.dropout(torch.relu(norm(out)))
        pooled = [POOLS[p](h, batch) for p in self.pooling if p in POOLS]
        if "true_class" in self.pooling:
            pooled.append(global_add_pool(h * x[:, TRUE_CLASS_FEATURE, None], batch))
        if self.order is not None:
            pooled.append(self.order(h).reshape(-1, self.num_nodes * self.order.out_features))
        return self.head(torch.cat(pooled, dim=1)).squeeze(-1)
