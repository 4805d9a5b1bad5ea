"""Detector logits as differentiable functions of the input: input -> IPG -> detector.

An attacker who knows the detector (Carlini & Wagner 2017; Tramer et al. 2020) needs the
gradient of the detector's score with respect to the input. The capture's graph tensors are
products of weights and activations gathered on a fixed edge set
(:meth:`IPGCapture.graph_tensors`), so autograd goes through them; each detector is then applied
to the batched tensors directly: the GNN on one block-diagonal batch built by index arithmetic,
a baseline through its own torch features (:meth:`FeatureDetector.logit`). Logits, not
probabilities, so the gradient does not vanish where the sigmoid saturates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from ipg_gnn.detect.baselines import FeatureDetector, unit_activations
from ipg_gnn.provenance import IPGCapture


class GraphLogit(Protocol):
    """A detector's logit (> 0 leans contrast) of a batch of IPGs on a shared edge set, from
    node features (N, V, F) and edge contributions (N, E)."""

    def __call__(self, x: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor: ...


class GNNLogit:
    """The GNN detector's logit: the `N` graphs become one PyG batch (edge indices offset by
    `V` per graph, as `Batch.from_data_list` would) without leaving autograd."""

    def __init__(self, model: nn.Module, edge_index: torch.Tensor, weight: torch.Tensor) -> None:
        self.model = model.eval()
        self.edge_index, self.weight = edge_index, weight

    def __call__(self, x: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
        n, v = x.shape[:2]
        device = x.device
        offsets = torch.arange(n, device=device) * v
        edge_index = (self.edge_index.to(device)[:, None, :] + offsets[None, :, None]).flatten(1)
        weight = self.weight.to(device=device, dtype=contribution.dtype).expand(n, -1)
        edge_attr = torch.stack([contribution.reshape(-1), weight.reshape(-1)], dim=1)
        batch = torch.arange(n, device=device).repeat_interleave(v)
        return self.model(x.reshape(n * v, -1), edge_index, edge_attr, batch)


class BaselineLogit:
    """An activation baseline's logit: its features of the graphs' unit activations (node
    feature 0 of each IPG layer, `spans` = (offset, num_units) per layer)."""

    def __init__(self, detector: FeatureDetector, spans: Sequence[tuple[int, int]]) -> None:
        self.detector, self.spans = detector, list(spans)

    def __call__(self, x: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
        return self.detector.logit(unit_activations(x, self.spans))


class InputLogit:
    """A detector's logit as a function of the model's input: capture, then the detector.
    Differentiable in the input when called with autograd on. `temperature`: a straight-through
    surrogate gradient for the capture's `z > 0` node feature (same values; None: its true,
    zero gradient)."""

    def __init__(
        self, capture: IPGCapture, graph_logit: GraphLogit, temperature: float | None = None
    ) -> None:
        self.capture, self.graph_logit, self.temperature = capture, graph_logit, temperature

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        x, contribution = self.capture.graph_tensors(inputs, self.temperature)
        return self.graph_logit(x, contribution)


@torch.no_grad()
def stored_logits(
    graph_logit: GraphLogit, x: torch.Tensor, contribution: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Logits of stored graphs (e.g. an `IPGDataset`'s `meta["x"]`, `meta["contribution"]`),
    in chunks of `batch_size`."""
    return torch.cat(
        [
            graph_logit(x[i : i + batch_size], contribution[i : i + batch_size]).float()
            for i in range(0, len(x), batch_size)
        ]
    )
