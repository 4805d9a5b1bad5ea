"""Attribution (over the GNN detector, or from dense IPG flow differences) and repair plans."""

from ipg_gnn.explain.attribution import EXPLAINERS, Attribution, attribute, make_explainer
from ipg_gnn.explain.flow import FLOW_EXPLAINER, flow_difference
from ipg_gnn.explain.plan import LEVELS, PlanError, RepairPlan, make_plan, rank_layers

__all__ = [
    "EXPLAINERS",
    "FLOW_EXPLAINER",
    "LEVELS",
    "Attribution",
    "PlanError",
    "RepairPlan",
    "attribute",
    "flow_difference",
    "make_explainer",
    "make_plan",
    "rank_layers",
]
