"""Repair plans: per layer, units and edges ranked by attribution, and the targets chosen."""

from ipg_gnn.plan.repair_plan import (
    Level,
    PlanError,
    RepairPlan,
    choose_targets,
    make_plan,
    rank_layers,
)

__all__ = ["Level", "PlanError", "RepairPlan", "choose_targets", "make_plan", "rank_layers"]
