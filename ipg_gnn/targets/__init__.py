"""The DNNs under study, their training, and predicting with them."""

from ipg_gnn.targets.models import MLP, BasicBlock, SmallCNN, SmallResNet
from ipg_gnn.targets.training import (
    ClassifierModule,
    accuracy,
    batched_logits,
    logit_confidence,
    predict,
    train_target,
)

__all__ = [
    "MLP",
    "BasicBlock",
    "ClassifierModule",
    "SmallCNN",
    "SmallResNet",
    "accuracy",
    "batched_logits",
    "logit_confidence",
    "predict",
    "train_target",
]
