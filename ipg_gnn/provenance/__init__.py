"""IPG capture: tracing a model, per-op rules, and graph assembly."""

from ipg_gnn.provenance.capture import (
    EDGE_FEATURES,
    NODE_FEATURES,
    CaptureConfig,
    IPGBatch,
    IPGCapture,
    capture,
)
from ipg_gnn.provenance.ops import Layer, LayerKind, UnsupportedOpError, window_sums
from ipg_gnn.provenance.plan import CapturePlan, trace

__all__ = [
    "EDGE_FEATURES",
    "NODE_FEATURES",
    "CaptureConfig",
    "CapturePlan",
    "IPGBatch",
    "IPGCapture",
    "Layer",
    "LayerKind",
    "UnsupportedOpError",
    "capture",
    "trace",
    "window_sums",
]
