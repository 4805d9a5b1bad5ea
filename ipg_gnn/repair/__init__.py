"""Repair: parameter masks from a plan, masked fine-tuning, repair methods (DP-SGD among the
baselines), reports."""

from ipg_gnn.repair.finetune import masked_finetune
from ipg_gnn.repair.masks import (
    Masks,
    all_masks,
    count_allowed,
    layer_masks,
    params_per_target,
    plan_masks,
    unit_outputs,
    unit_parameters,
)
from ipg_gnn.repair.methods import (
    ActivationPatch,
    FinePruning,
    LayerFinetune,
    MaskedFinetune,
    PatchedModel,
    PlanFinetune,
    RandomPlanFinetune,
    RepairContext,
    RepairMethod,
)
from ipg_gnn.repair.private import DPSGDFinetune
from ipg_gnn.repair.updates import LowRank, NormBias, ScaleBias, Update

__all__ = [
    "ActivationPatch",
    "DPSGDFinetune",
    "FinePruning",
    "LayerFinetune",
    "LowRank",
    "MaskedFinetune",
    "Masks",
    "NormBias",
    "PatchedModel",
    "PlanFinetune",
    "RandomPlanFinetune",
    "RepairContext",
    "RepairMethod",
    "ScaleBias",
    "Update",
    "all_masks",
    "count_allowed",
    "layer_masks",
    "masked_finetune",
    "params_per_target",
    "plan_masks",
    "unit_outputs",
    "unit_parameters",
]
