"""IPG datasets (PyG): sharded, resumable storage, builders and the dataset class."""

from ipg_gnn.graphs.build import build_store, prepare_capture
from ipg_gnn.graphs.dataset import IPGDataset
from ipg_gnn.graphs.store import GraphStore, IPGStoreError, Topology

__all__ = [
    "GraphStore",
    "IPGDataset",
    "IPGStoreError",
    "Topology",
    "build_store",
    "prepare_capture",
]
