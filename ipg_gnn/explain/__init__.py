"""Attribution: which IPG units and edges make a contrast population flow differently, over
the GNN detector (PyG explainers) or from the model's dense IPGs (flow difference)."""

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

__all__ = [
    "Attribution",
    "AttributionSource",
    "Attributor",
    "DetectorAttributor",
    "FlowDifference",
    "GNNExplainer",
    "IntegratedGradients",
    "PairedIntegratedGradients",
    "PGExplainer",
    "Saliency",
    "flow_difference",
]
