"""Training a GNN detector with Lightning: fit on `ipg_train`, keep the checkpoint of best
validation AUROC on `ipg_val`, stop early when it stops improving."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch_geometric.data.lightning import LightningDataset
from torch_geometric.loader import DataLoader
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from ipg_gnn.detect.models import IPGClassifier
from ipg_gnn.graphs import IPGDataset

MONITOR = "detector/val_auroc"


class DetectorModule(L.LightningModule):
    """Binary cross-entropy on graph logits, `pos_weight` balancing the two populations."""

    def __init__(
        self,
        model: IPGClassifier,
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        pos_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.register_buffer("pos_weight", torch.tensor(pos_weight))
        self.val_auroc, self.val_acc = BinaryAUROC(), BinaryAccuracy()

    def forward(self, batch) -> torch.Tensor:
        return self.model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            logits, y.float(), pos_weight=self.pos_weight
        )

    def training_step(self, batch, _: int) -> torch.Tensor:
        loss = self._loss(self(batch), batch.y)
        self.log("detector/train_loss", loss, batch_size=batch.num_graphs, prog_bar=True)
        return loss

    def validation_step(self, batch, _: int) -> None:
        logits = self(batch)
        self.val_auroc.update(logits.sigmoid(), batch.y)
        self.val_acc.update(logits.sigmoid(), batch.y)
        self.log("detector/val_loss", self._loss(logits, batch.y), batch_size=batch.num_graphs)

    def on_validation_epoch_end(self) -> None:
        self.log(MONITOR, self.val_auroc.compute(), prog_bar=True)
        self.log("detector/val_acc", self.val_acc.compute())
        self.val_auroc.reset()
        self.val_acc.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def normalize_from(model: IPGClassifier, train: IPGDataset) -> IPGClassifier:
    """Set the detector's input statistics from the training graphs."""
    t = train.meta
    weight = t["weight"] if train.dynamic else train.topology.weight.expand_as(t["contribution"])
    edges = torch.stack([t["contribution"].reshape(-1), weight.reshape(-1)], dim=1)
    return model.fit_normalization(t["x"], edges)


def fit_detector(
    model: IPGClassifier,
    train: IPGDataset,
    val: IPGDataset,
    trainer_factory,
    directory: str | Path,
    batch_size: int = 128,
    lr: float = 5e-3,
    weight_decay: float = 1e-4,
    patience: int = 5,
) -> dict:
    """Train `model` (normalised from `train`) and load its best-validation weights.

    `trainer_factory(callbacks)` builds the Lightning `Trainer`. Returns the best validation
    AUROC, the epochs run and the Lightning checkpoint path."""
    for name, ds in (("ipg_train", train), ("ipg_val", val)):
        labels = ds.labels
        if len(labels) == 0 or labels.min() == labels.max():
            raise ValueError(
                f"the {name} IPGs need both reference and contrast graphs; got "
                f"{int(labels.sum())} contrast of {len(labels)}"
            )
    labels = train.labels
    pos_weight = float((labels == 0).sum()) / float(labels.sum())
    module = DetectorModule(normalize_from(model, train), lr, weight_decay, pos_weight)
    checkpoint = ModelCheckpoint(
        dirpath=directory,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    stop = EarlyStopping(monitor=MONITOR, mode="max", patience=patience)
    trainer: L.Trainer = trainer_factory([checkpoint, stop])
    trainer.fit(module, datamodule=LightningDataset(train, val, batch_size=batch_size))
    if checkpoint.best_model_path:  # none under fast_dev_run, which disables checkpointing
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(best["state_dict"])
        best_auroc = float(checkpoint.best_model_score)
    else:
        best_auroc = float(trainer.callback_metrics.get(MONITOR, float("nan")))
    return {
        "best_val_auroc": best_auroc,
        "epochs": trainer.current_epoch,
        "lightning_checkpoint": checkpoint.best_model_path or None,
    }


@torch.no_grad()
def score_graphs(model: nn.Module, dataset: IPGDataset, batch_size: int = 256) -> torch.Tensor:
    """P(contrast population) of every graph of `dataset`, in dataset order."""
    model.eval()
    device = next(model.parameters()).device
    scores = [
        model(b.x, b.edge_index, b.edge_attr, b.batch).sigmoid().cpu()
        for b in (b.to(device) for b in DataLoader(dataset, batch_size=batch_size))
    ]
    return torch.cat(scores)
