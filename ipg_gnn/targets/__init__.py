"""The DNNs under study, their training, and their checkpoint cache."""

from ipg_gnn.targets.models import MLP, BasicBlock, SmallCNN, SmallResNet
from ipg_gnn.targets.training import (
    CheckpointMismatchError,
    ClassifierModule,
    accuracy,
    build_model,
    config_key,
    load_checkpoint,
    model_fingerprint,
    predict,
    save_checkpoint,
    train_target,
)

__all__ = [
    "MLP",
    "BasicBlock",
    "CheckpointMismatchError",
    "ClassifierModule",
    "SmallCNN",
    "SmallResNet",
    "accuracy",
    "build_model",
    "config_key",
    "load_checkpoint",
    "model_fingerprint",
    "predict",
    "save_checkpoint",
    "train_target",
]
