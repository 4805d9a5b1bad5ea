"""Attribution: which IPG units and edges make a contrast population flow differently, over
the GNN detector (PyG explainers) or from the model itself (flow difference of its dense IPGs, loss
gradient of its units)."""

from ipg_gnn.explain.base import Attribution, AttributionSource, Attributor
from ipg_gnn.explain.detector import (
    DetectorAttributor,
    GNNExplainer,
    IntegratedGradients,
    PairedIntegratedGradients,
    PGExplainer,
    Saliency,
)
from ipg_gnn.explain.flow import FlowDifference, flow_difference
from ipg_gnn.explain.gradient import LossGradient, loss_gradient

__all__ = [
    "Attribution",
    "AttributionSource",
    "Attributor",
    "DetectorAttributor",
    "FlowDifference",
    "GNNExplainer",
    "IntegratedGradients",
    "LossGradient",
    "PairedIntegratedGradients",
    "PGExplainer",
    "Saliency",
    "flow_difference",
    "loss_gradient",
]
