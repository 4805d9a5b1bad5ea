"""IPG capture: tracing a model, per-op rules, and graph assembly."""

from ipg_gnn.provenance.capture import (
    EDGE_FEATURES,
    NODE_FEATURES,
    CaptureConfig,
    IPGBatch,
    IPGCapture,
    capture,
)
from ipg_gnn.provenance.plan import Layer, Plan, UnsupportedOpError, build_plan, window_sums

__all__ = [
    "EDGE_FEATURES",
    "NODE_FEATURES",
    "CaptureConfig",
    "IPGBatch",
    "IPGCapture",
    "Layer",
    "Plan",
    "UnsupportedOpError",
    "build_plan",
    "capture",
    "window_sums",
]
