"""What every attributor gives and needs.

An attributor scores every IPG node (unit) and edge (weight) of the model under repair by how
much it makes a contrast population's inputs flow differently from the reference population's.
Some explain the GNN detector over IPG datasets, others read the model directly; each takes what
it needs from an :class:`AttributionSource`, so the repair job never asks which kind it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.stats import spearmanr
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.graphs import IPGDataset, Topology
from ipg_gnn.objectives import Contrast, Population, RepairLoss


@dataclass
class Attribution:
    """Mean node and edge importance on contrast and on reference graphs, and their contrast."""

    node_contrast: torch.Tensor  # (V,)
    node_reference: torch.Tensor
    edge_contrast: torch.Tensor  # (E,) over the shared edge set
    edge_reference: torch.Tensor
    explainer: str
    score: str  # what the importances measure, for plots and reports
    # How stable the ranking is across halves of the inputs (where the attributor measures it).
    stability: dict[str, float | None] = field(default_factory=dict)

    @property
    def node(self) -> torch.Tensor:
        return self.node_contrast - self.node_reference

    @property
    def edge(self) -> torch.Tensor:
        return self.edge_contrast - self.edge_reference


class AttributionSource(Protocol):
    """What a repair job can hand an attributor, built only when asked for."""

    model: nn.Module
    seed: int

    def inputs(self) -> Images:
        """The inputs attribution is computed on (the repair split)."""

    def contrast(self, name: str) -> Contrast:
        """The train run's contrast population `name`."""

    def reference(self) -> Population:
        """The train run's reference population."""

    def select(self, population: Population) -> Images:
        """The inputs of the repair split that `population` holds (before it changes them)."""

    def ipg_dataset(self, contrast: str) -> IPGDataset:
        """Reference and `contrast` IPGs of `inputs()`, through the run's IPG cache."""

    def detector(self, num_nodes: int) -> nn.Module:
        """The train run's GNN detector."""

    def repair_loss(self) -> RepairLoss:
        """The repair's objective loss before any unit is planned (no consistency term)."""


class Attributor(ABC):
    """Scores IPG nodes and edges for the contrast population named `contrast`."""

    name: ClassVar[str]

    def __init__(self, contrast: str) -> None:
        self.contrast = contrast

    @abstractmethod
    def __call__(self, source: AttributionSource) -> tuple[Attribution, Topology]:
        """The attribution and the topology its scores index."""


def spearman(a: ArrayLike, b: ArrayLike) -> float | None:
    """Spearman's correlation with tied scores sharing their mean rank (units a ranking cannot
    tell apart, e.g. never-active units at 0, must not be ordered by chance); None where it is
    undefined (every unit scored alike)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def ranking_agreement(
    a: torch.Tensor, b: torch.Tensor, top_fraction: float
) -> dict[str, float | None]:
    """How far two unit rankings agree: Spearman correlation of the scores `a` and `b`, and the
    share of `a`'s top `top_fraction` units among `b`'s."""
    k = max(1, int(round(top_fraction * len(a))))
    top_a, top_b = set(a.topk(k).indices.tolist()), set(b.topk(k).indices.tolist())
    return {
        "spearman_halves": spearman(a.detach().cpu().numpy(), b.detach().cpu().numpy()),
        f"top{k}_overlap": len(top_a & top_b) / k,
    }
