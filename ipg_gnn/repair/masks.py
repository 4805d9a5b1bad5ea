"""Which parameter entries a repair may change.

A mask per parameter (True = may change) is built from a repair plan: for a node target, the
unit's row of the weight (a conv filter), its bias and, when a BatchNorm is folded into the
layer, that channel's scale and shift (the IPG's node is the folded unit: pruning silences it
through them, where a zeroed filter alone would leave the BatchNorm's constant); for an edge
target, the weights that carry that edge, as the capture op of its layer says (`edge_entries`:
the kernel slice of a convolution, within the unit's group for a grouped one; the block of
weights of a flattened channel for a dense layer after a flatten). Baselines get masks of the
same kind: a whole layer, or every parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ipg_gnn.plan import PlanError, RepairPlan
from ipg_gnn.provenance import CapturePlan
from ipg_gnn.runs.keys import model_fingerprint

Masks = dict[str, torch.Tensor]


def _op(capture_plan: CapturePlan, layer: str):
    if layer not in capture_plan.weight_layers():
        raise PlanError(f"layer {layer} is not a weight layer of this model's IPGs")
    return capture_plan.op(layer)


def plan_masks(model: nn.Module, plan: RepairPlan, capture_plan: CapturePlan) -> Masks:
    """Masks allowing exactly the plan's targets to change; a plan made for another model is
    refused."""
    plan.check_model(model_fingerprint(model))
    masks: Masks = {}
    for layer, targets in plan.targets.items():
        if plan.level == "node":
            for name, p in unit_parameters(model, capture_plan, layer).items():
                masks.setdefault(name, torch.zeros_like(p, dtype=torch.bool))[list(targets)] = True
            continue
        module = model.get_submodule(layer)
        weight = torch.zeros_like(module.weight, dtype=torch.bool)
        op = _op(capture_plan, layer)
        for source, unit in targets:
            try:
                weight |= op.edge_entries(unit, source).to(weight.device)
            except ValueError as e:
                raise PlanError(f"layer {layer}: {e}") from e
        masks[f"{layer}.weight"] = weight
        if module.bias is not None:
            masks[f"{layer}.bias"] = torch.zeros_like(module.bias, dtype=torch.bool)
    return masks


def unit_parameters(
    model: nn.Module, capture_plan: CapturePlan, layer: str
) -> dict[str, nn.Parameter]:
    """The parameters a node target of `layer` owns, indexed by unit along their first
    dimension: the layer's own and those of a BatchNorm folded into it."""
    return {
        f"{path}.{name}": p
        for path in _op(capture_plan, layer).unit_modules
        for name, p in model.get_submodule(path).named_parameters(recurse=False)
    }


def pruned_entries(masks: Masks, capture_plan: CapturePlan) -> Masks:
    """What pruning zeroes: every planned entry, except that a unit whose folded BatchNorm
    scale and shift are planned is silenced by zeroing those two alone (its output is then
    exactly 0, as channel pruning at the BatchNorm does), so its weights stay as they were."""
    zeroed = dict(masks)
    for layer in capture_plan.weight_layers():
        norm = capture_plan.op(layer).norm
        silenced = masks.get(f"{norm}.weight") if norm else None
        if silenced is None:
            continue
        for name in (f"{layer}.weight", f"{layer}.bias"):
            if name in zeroed:
                rows = silenced.reshape(-1, *[1] * (zeroed[name].ndim - 1))
                zeroed[name] = zeroed[name] & ~rows
    return zeroed


def unit_outputs(
    capture_plan: CapturePlan, units: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """`units` (weight layer -> unit indices) keyed by the module whose output is their value
    in the IPG: a folded BatchNorm, else the layer itself. A loss hooking these outputs sees
    every parameter a node target frees (the BatchNorm's scale and shift included)."""
    return {(_op(capture_plan, layer).norm or layer): list(idx) for layer, idx in units.items()}


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
    if level == "node":
        return sum(p[0].numel() for p in unit_parameters(model, capture_plan, layer).values())
    return _op(capture_plan, layer).weights_per_edge


def count_allowed(masks: Masks) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))
