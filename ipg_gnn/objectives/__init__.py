"""Objectives: the failure a run studies (the only package that knows one from another)."""

from ipg_gnn.objectives.base import (
    Contrast,
    Contrasted,
    Objective,
    Population,
    RepairLoss,
    Selection,
    SplitInputs,
)
from ipg_gnn.objectives.fairness import Fairness, FairnessLoss, GroupPopulation
from ipg_gnn.objectives.robustness import AdversarialLoss, AttackContrast, Robustness

__all__ = [
    "AdversarialLoss",
    "AttackContrast",
    "Contrast",
    "Contrasted",
    "Fairness",
    "FairnessLoss",
    "GroupPopulation",
    "Objective",
    "Population",
    "RepairLoss",
    "Robustness",
    "Selection",
    "SplitInputs",
]
