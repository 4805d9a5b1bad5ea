"""Training the target DNN with Lightning, and predicting with it."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ipg_gnn.data import Images


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
def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log(p_y / (1 - p_y)) computed stably as z_y - logsumexp(z_other): LiRA's
    logit-scaled confidence, close to Gaussian across models."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.logsumexp(1)


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The eval-mode model's logits on `x`, computed in batches on the model's device and
    returned on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat(
        [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    )


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels of `x`, batched, on the model's device."""
    return batched_logits(model, x, batch_size).argmax(1)


def accuracy(model: nn.Module, images: Images, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on `images`."""
    return float((predict(model, images.x, batch_size) == images.y).float().mean())
