"""Targeted repair: parameter masks from a plan, masked adversarial fine-tuning."""

from ipg_gnn.repair.finetune import masked_finetune
from ipg_gnn.repair.masks import (
    Masks,
    all_masks,
    count_allowed,
    layer_masks,
    params_per_target,
    plan_masks,
)

__all__ = [
    "Masks",
    "all_masks",
    "count_allowed",
    "layer_masks",
    "masked_finetune",
    "params_per_target",
    "plan_masks",
]
