"""Attribution over the GNN detector and repair plans built from it."""

from ipg_gnn.explain.attribution import EXPLAINERS, Attribution, attribute, make_explainer
from ipg_gnn.explain.plan import LEVELS, PlanError, RepairPlan, make_plan, rank_layers

__all__ = [
    "EXPLAINERS",
    "LEVELS",
    "Attribution",
    "PlanError",
    "RepairPlan",
    "attribute",
    "make_explainer",
    "make_plan",
    "rank_layers",
]
