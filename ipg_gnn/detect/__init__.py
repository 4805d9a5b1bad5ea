"""Telling a contrast population's IPGs (e.g. adversarial) from the reference population's:
GNN classifiers and activation baselines."""

from ipg_gnn.detect.baselines import (
    LID,
    Activations,
    FeatureDetector,
    FlatActivations,
    Mahalanobis,
    layer_spans,
)
from ipg_gnn.detect.differentiable import (
    BaselineLogit,
    GNNLogit,
    GraphLogit,
    InputLogit,
    stored_logits,
)
from ipg_gnn.detect.metrics import detection_metrics, evaluate_scores, threshold_at_fpr, tpr_at_fpr
from ipg_gnn.detect.models import CONVS, IPGClassifier
from ipg_gnn.detect.training import DetectorModule, fit_detector, score_graphs

__all__ = [
    "layer_spans",
    "BaselineLogit",
    "GNNLogit",
    "GraphLogit",
    "InputLogit",
    "stored_logits",
    "threshold_at_fpr",
    "CONVS",
    "LID",
    "Activations",
    "DetectorModule",
    "FeatureDetector",
    "FlatActivations",
    "IPGClassifier",
    "Mahalanobis",
    "detection_metrics",
    "evaluate_scores",
    "fit_detector",
    "score_graphs",
    "tpr_at_fpr",
]
