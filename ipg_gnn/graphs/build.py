"""Building IPG datasets: the graphs of every input of a split, as it is (the reference
population) or as one of an objective's contrast populations makes it.

Contrast graphs are captured from the very inputs whose reference graphs sit in the same split,
so both versions of an input never cross splits. Each shard seeds the contrast from (seed, shard
index), so a resumed build writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.graphs.store import GraphStore, Topology
from ipg_gnn.objectives import Contrast
from ipg_gnn.provenance import CaptureConfig, IPGCapture
from ipg_gnn.runs.io import ArtifactError
from ipg_gnn.runs.keys import model_fingerprint
from ipg_gnn.targets import predict

log = logging.getLogger(__name__)


def prepare_capture(
    model: nn.Module, root: str | Path, config: CaptureConfig, calibration: torch.Tensor
) -> tuple[IPGCapture, Topology]:
    """The capturer of `model` and its topology under `root`: loaded when it exists there (and
    was made from this model), else calibrated on `calibration` and saved."""
    root = Path(root)
    fingerprint = model_fingerprint(model)
    capturer = IPGCapture(model, calibration[:1], config)
    if (root / "topology.pt").is_file():
        try:
            topology = Topology.load(root)
        except ArtifactError as e:
            log.warning("%s; choosing the topology again", e)
        else:
            topology.check_model(fingerprint, root)
            if topology.static_pairs is not None:
                capturer.use_static_pairs(topology.static_pairs)
            return capturer, topology
    if config.mode == "static":
        capturer.calibrate(calibration)
    topology = Topology.from_capture(capturer, fingerprint)
    topology.save(root)
    return capturer, topology


def build_store(
    capturer: IPGCapture,
    model: nn.Module,
    images: Images,
    source_index: np.ndarray,
    directory: str | Path,
    split: str,
    population: str,
    contrast: Contrast | None = None,
    shard_size: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> GraphStore:
    """Capture (or resume capturing) the graphs of `images` as they are (`contrast` None: the
    reference population), or of the versions `contrast` makes of them against `model`;
    `population` names them in the store."""
    if len(images) == 0:
        raise ValueError(f"split {split!r} is empty: no IPGs to build")
    dynamic = capturer.config.mode == "dynamic"
    meta = {
        "split": split,
        "population": population,
        "contrast": contrast is not None,
        "settings": contrast.key if contrast else None,
        "inputs": images.fingerprint(),
        "fingerprint": model_fingerprint(model),
        "seed": seed,
    }

    def make_shard(i: int, items: slice) -> dict[str, torch.Tensor]:
        x, y = images.x[items], images.y[items]
        if contrast is None:
            inputs, pred = x, predict(model, x)
            success = torch.zeros(len(x), dtype=torch.bool)
        else:
            result = contrast(model, x, y, seed + i)
            inputs, pred, success = result.x, result.pred, result.success
        ipg = capturer(inputs)
        shard = {
            "x": ipg.x,
            "contribution": ipg.contribution,
            "source_index": torch.as_tensor(source_index[items], dtype=torch.long),
            "true_label": y,
            "pred": pred,
            "success": success,
            "is_contrast": torch.full((len(x),), contrast is not None),
        }
        if dynamic:
            shard |= {"edge_index": ipg.edge_index, "weight": ipg.weight}
        return shard

    desc = f"IPGs {split}/{population}"
    return GraphStore(Path(directory)).build(
        meta, len(images), shard_size, make_shard, progress, desc
    )
