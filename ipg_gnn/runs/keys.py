"""Cache keys and model fingerprints.

A cache key hashes every setting that shapes an artefact, so a rerun with the same settings
reuses it and any change rebuilds it; settings that only say where files are or how progress is
shown are left out. A model fingerprint hashes the weights themselves, so artefacts derived from
one model (IPG datasets, plans) can be checked against another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

# Settings that say where files are or how progress is shown, not what the weights become.
_LOCATION_KEYS = ("data_dir", "download", "folder")
_COSMETIC_TRAINER_KEYS = (
    "default_root_dir",
    "enable_progress_bar",
    "enable_model_summary",
    "enable_checkpointing",
    "log_every_n_steps",
    "logger",
)


# Bumped whenever what a graph store holds changes, so stores of an older layout are rebuilt.
IPG_STORE_LAYOUT = 3


def plain(node: Any) -> Any:
    """A config node as plain Python (interpolations resolved); other values unchanged."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def config_key(payload: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able config, used as a cache key."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer: two models share it only if they compute the same
    function, so artefacts derived from one (IPG datasets) can be checked against the other."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def source_identity(cfg: DictConfig) -> dict[str, Any]:
    """The dataset source's settings that choose the data, not where its files are."""
    return {k: v for k, v in plain(cfg.dataset.source).items() if k not in _LOCATION_KEYS}


def target_cache_key(cfg: DictConfig, arch: Mapping[str, Any], data: str) -> str:
    """Hash of everything that shapes the target's weights; `data` is the fingerprint of the
    exact training set (inputs and labels)."""
    trainer = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer).items()
        if k not in _COSMETIC_TRAINER_KEYS
    }
    return config_key(
        {
            "arch": arch,
            "train": plain(cfg.target.train),
            "source": source_identity(cfg),
            "split": plain(cfg.split),
            "trainer": trainer,
            "seed": cfg.seed,
            "data": data,
        }
    )


def ipg_cache_key(cfg: DictConfig, calibration: str) -> str:
    """Hash of everything that shapes a run's IPG topology besides the model (whose fingerprint
    names the stores' root too); `calibration` is the fingerprint of the inputs that chose the
    static edges. Each store also records the fingerprint of its own inputs."""
    return config_key(
        {
            "calibration_inputs": calibration,
            "layout": IPG_STORE_LAYOUT,
            "capture": plain(cfg.ipg.capture),
            "calibration": cfg.ipg.calibration_size,
            "split": plain(cfg.split),
            "source": source_identity(cfg),
            "seed": cfg.seed,
        }
    )
