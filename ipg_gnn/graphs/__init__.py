"""IPG datasets (PyG): sharded, resumable storage, builders and the dataset class."""

from ipg_gnn.graphs.build import build_store, prepare_capture
from ipg_gnn.graphs.dataset import LABEL_FEATURES, IPGDataset, label_node_features
from ipg_gnn.graphs.store import GraphStore, IPGStoreError, Topology

__all__ = [
    "LABEL_FEATURES",
    "GraphStore",
    "IPGDataset",
    "IPGStoreError",
    "Topology",
    "build_store",
    "label_node_features",
    "prepare_capture",
]
