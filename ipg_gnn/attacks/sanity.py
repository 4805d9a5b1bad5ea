"""Sanity checks of an attack evaluation: the symptoms of a broken attack or of gradient masking.

A robustness number means little unless the attack behind it behaves like an attack (Carlini et
al. 2019, "On Evaluating Adversarial Robustness"; Athalye et al. 2018): accuracy must fall as
the budget grows and reach about zero at a large one; more iterations must not help the model;
and a gradient-free attack must not beat the gradient attack by much, else the gradients are
uninformative (masked) and the gradient attack's number is not a robustness number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ipg_gnn.attacks.evasion import Attack, seed_attack_rng
from ipg_gnn.targets import predict


def attack_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, seed: int = 0
) -> float:
    """Accuracy of `model` on `attack`'s examples (the prediction re-checked on the model)."""
    seed_attack_rng(seed)
    x_adv = attack(model, x, y).x_adv
    return float((predict(model, x_adv) == y.cpu()).float().mean())


def _non_increasing(values: Sequence[float], tol: float) -> bool:
    return all(b <= a + tol for a, b in zip(values, values[1:], strict=False))


def sanity_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    gradient: Attack,
    gradient_free: Attack,
    eps_grid: Sequence[float] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5),
    iter_grid: Sequence[int] = (10, 40, 100),
    large_eps_max_acc: float = 0.05,
    tol: float = 0.02,
    masking_gap: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the checks with a configured gradient attack (ART, with `eps`, `eps_step` and
    `max_iter`; swept over `eps_grid` with the step scaled along, and over `iter_grid`) and a
    gradient-free one (e.g. Square) at its configured budget.

    Returns the measured curves and `checks`, each True when passed: `monotone_in_eps`
    (accuracy, starting from the clean one, never rises by more than `tol` as eps grows),
    `near_zero_at_large_eps` (at most `large_eps_max_acc` at the largest eps),
    `monotone_in_iterations` (never rises by more than `tol` with more iterations) and
    `gradient_free_not_stronger` (the gradient-free attack's accuracy at most `masking_gap`
    below the gradient attack's, at the configured budget and at the largest of the grid);
    `passed` is their conjunction.
    """
    params = gradient.art_attack.keywords
    step_ratio = params["eps_step"] / params["eps"]
    clean = float((predict(model, x) == y.cpu()).float().mean())
    by_eps = [
        attack_accuracy(model, x, y, gradient.with_params(eps=e, eps_step=e * step_ratio), seed)
        for e in eps_grid
    ]
    by_iter = [
        attack_accuracy(model, x, y, gradient.with_params(max_iter=n), seed) for n in iter_grid
    ]
    # Both attacks at the configured budget and at the grid's largest one, where a masked
    # model's gradient attack is stuck while the gradient-free one wins easily.
    budgets = [params["eps"], eps_grid[-1]]
    gradient_acc = [attack_accuracy(model, x, y, gradient, seed), by_eps[-1]]
    free_acc = [
        attack_accuracy(model, x, y, gradient_free.with_params(eps=e), seed) for e in budgets
    ]
    checks = {
        "monotone_in_eps": _non_increasing([clean, *by_eps], tol),
        "near_zero_at_large_eps": by_eps[-1] <= large_eps_max_acc,
        "monotone_in_iterations": _non_increasing(by_iter, tol),
        "gradient_free_not_stronger": all(
            f >= g - masking_gap for f, g in zip(free_acc, gradient_acc, strict=True)
        ),
    }
    return {
        "n": len(x),
        "clean_acc": clean,
        "eps": list(eps_grid),
        "acc_by_eps": by_eps,
        "max_iter": list(iter_grid),
        "acc_by_iter": by_iter,
        "budgets": budgets,
        "gradient": {"name": gradient.name, "acc": gradient_acc},
        "gradient_free": {"name": gradient_free.name, "acc": free_acc},
        "checks": checks,
        "passed": all(checks.values()),
    }
