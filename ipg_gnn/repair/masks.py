"""Which parameter entries a repair may change.

A mask per parameter (True = may change) is built from a repair plan: for a node target, the
unit's row of the weight (a conv filter) and its bias; for an edge target, the single weight
between the source unit and the unit (the kernel slice for a convolution, the block of weights
of a flattened channel for a dense layer after a flatten). Baselines get masks of the same kind:
a whole layer, or every parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from ipg_gnn.explain.plan import PlanError, RepairPlan
from ipg_gnn.provenance import CapturePlan

Masks = dict[str, torch.Tensor]


def _op(capture_plan: CapturePlan, layer: str):
    for op in capture_plan.ops:
        if op.layer.name == layer:
            return op
    raise PlanError(f"layer {layer} is not a weight layer of this model's IPGs")


def plan_masks(model: nn.Module, plan: RepairPlan, capture_plan: CapturePlan) -> Masks:
    """Masks allowing exactly the plan's targets to change."""
    masks: Masks = {}
    for layer, targets in plan.targets.items():
        module = model.get_submodule(layer)
        weight = torch.zeros_like(module.weight, dtype=torch.bool)
        bias = None if module.bias is None else torch.zeros_like(module.bias, dtype=torch.bool)
        if plan.level == "node":
            for unit in targets:
                weight[unit] = True
                if bias is not None:
                    bias[unit] = True
        else:
            op = _op(capture_plan, layer)
            view = weight.view(weight.shape[0], len(op.src_nodes), -1)
            for source, unit in targets:
                inputs = torch.nonzero(op.src_nodes == source).flatten()
                if len(inputs) == 0:
                    raise PlanError(f"node {source} does not feed layer {layer}")
                view[unit, inputs] = True
        masks[f"{layer}.weight"] = weight
        if bias is not None:
            masks[f"{layer}.bias"] = bias
    return masks


def layer_masks(model: nn.Module, layers: list[str]) -> Masks:
    """Masks allowing every parameter of the given modules to change."""
    masks = {}
    for layer in layers:
        for name, p in model.get_submodule(layer).named_parameters():
            masks[f"{layer}.{name}"] = torch.ones_like(p, dtype=torch.bool)
    return masks


def all_masks(model: nn.Module) -> Masks:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}


def params_per_target(model: nn.Module, capture_plan: CapturePlan, layer: str, level: str) -> int:
    """Parameters one node or edge target of `layer` frees."""
    module = model.get_submodule(layer)
    per_unit = module.weight[0].numel() + (0 if module.bias is None else 1)
    if level == "node":
        return per_unit
    return module.weight[0].numel() // len(_op(capture_plan, layer).src_nodes)


def count_allowed(masks: Masks) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))
