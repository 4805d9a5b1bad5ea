"""Training the target DNN with Lightning, and the on-disk checkpoint cache.

A checkpoint records the architecture it was trained for (the model's config) next to the
weights, so loading it into any other architecture is refused with a clear error instead of a
shape mismatch deep inside `load_state_dict`. Cached checkpoints are keyed by a hash of every
setting that shapes the weights (architecture, training, dataset, split and seed), so a rerun
with the same settings reuses them and any change retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ipg_gnn.data import Images


class CheckpointMismatchError(ValueError):
    """A checkpoint was made for another architecture than the one asked for."""


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of an image classifier with Adam."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("target/train_loss", loss, prog_bar=True)
        self.log("target/train_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def build_model(arch: Mapping[str, Any]) -> nn.Module:
    """Instantiate a model from its architecture config (a `_target_` mapping)."""
    return instantiate(dict(arch), _convert_="all")


def config_key(payload: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able config, used as a cache key."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights + architecture atomically, so an interrupted save never leaves a bad file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(
            {"arch": dict(arch), "state_dict": model.state_dict(), "meta": dict(meta or {})}, tmp
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path, arch: Mapping[str, Any]) -> nn.Module:
    """Build the model of `arch` and load `path` into it; refuse a checkpoint of another arch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no target checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "arch" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"{path} is not an ipg-gnn target checkpoint")
    if ckpt["arch"] != dict(arch):
        raise CheckpointMismatchError(
            f"{path} was trained for architecture {ckpt['arch']}, but the config asks for "
            f"{dict(arch)}; point target.checkpoint at a matching file or drop it to retrain"
        )
    model = build_model(arch)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def train_target(
    model: nn.Module,
    images: Images,
    trainer: L.Trainer,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Fit `model` on `images` with `trainer`; returns the model in eval mode on the CPU."""
    loader = DataLoader(
        TensorDataset(images.x, images.y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    trainer.fit(ClassifierModule(model, lr, weight_decay), loader)
    return model.cpu().eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels of `x`, batched, on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat(
        [
            model(x[i : i + batch_size].to(device)).argmax(1).cpu()
            for i in range(0, len(x), batch_size)
        ]
    )


def accuracy(model: nn.Module, images: Images, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on `images`."""
    return float((predict(model, images.x, batch_size) == images.y).float().mean())


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer: two models share it only if they compute the same
    function, so artefacts derived from one (IPG datasets) can be checked against the other."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
