"""Checkpoints that know their architecture.

A checkpoint records the architecture it was made for (the model's `_target_` config) next to
the weights, so loading it into any other architecture is refused with a clear error instead of
a shape mismatch deep inside `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from ipg_gnn.errors import MissingFileError, UserError
from ipg_gnn.runs.io import atomic_save, read_checked


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint was made for another architecture than the one asked for."""


def build_model(arch: Mapping[str, Any]) -> nn.Module:
    """Instantiate a model from its architecture config (a `_target_` mapping)."""
    return instantiate(dict(arch), _convert_="all")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights + architecture atomically, so an interrupted save never leaves a bad file."""
    return atomic_save(
        {"arch": dict(arch), "state_dict": model.state_dict(), "meta": dict(meta or {})}, path
    )


def load_checkpoint(
    path: str | Path,
    arch: Mapping[str, Any],
    remedy: str = "delete it and run again to rebuild it",
) -> nn.Module:
    """Build the model of `arch` and load `path` into it; refuse a checkpoint of another arch;
    a damaged file is an `ArtifactError` naming it and `remedy`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no checkpoint at {path}")
    ckpt = read_checked(
        path, lambda f: torch.load(f, map_location="cpu", weights_only=True), remedy
    )
    if not isinstance(ckpt, dict) or "arch" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"{path} is not an ipg-gnn checkpoint")
    if ckpt["arch"] != dict(arch):
        raise CheckpointMismatchError(
            f"{path} was trained for architecture {ckpt['arch']}, but the config asks for "
            f"{dict(arch)}; point target.checkpoint at a matching file or drop it to retrain"
        )
    model = build_model(arch)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
