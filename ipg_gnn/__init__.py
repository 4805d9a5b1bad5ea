"""ipg-gnn: Inference Provenance Graphs for detecting and repairing adversarial vulnerability."""
