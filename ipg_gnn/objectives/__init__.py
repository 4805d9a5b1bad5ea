"""Objectives: the failure a run studies (the only package that knows one from another)."""

from ipg_gnn.objectives.backdoor import (
    Backdoor,
    BackdoorLoss,
    Trigger,
    TriggerContrast,
    attack_success_rate,
)
from ipg_gnn.objectives.base import (
    ConsistencyLoss,
    ConsistencyTerm,
    Contrast,
    Contrasted,
    FitModel,
    Objective,
    Population,
    RepairLoss,
    Selection,
    SplitInputs,
    UnitOutputs,
)
from ipg_gnn.objectives.fairness import Fairness, FairnessLoss, GroupPopulation
from ipg_gnn.objectives.membership import (
    AuditParts,
    MemberPopulation,
    Membership,
    NonMemberPopulation,
    PrivacyLoss,
)
from ipg_gnn.objectives.robustness import AdversarialLoss, AttackContrast, Robustness

__all__ = [
    "AdversarialLoss",
    "AttackContrast",
    "AuditParts",
    "Backdoor",
    "BackdoorLoss",
    "ConsistencyLoss",
    "ConsistencyTerm",
    "Contrast",
    "Contrasted",
    "Fairness",
    "FitModel",
    "FairnessLoss",
    "GroupPopulation",
    "MemberPopulation",
    "Membership",
    "NonMemberPopulation",
    "Objective",
    "Population",
    "PrivacyLoss",
    "RepairLoss",
    "Robustness",
    "Selection",
    "SplitInputs",
    "Trigger",
    "TriggerContrast",
    "UnitOutputs",
    "attack_success_rate",
]
