"""Robust accuracy as the field reports it: the per-input worst case over an attack ensemble.

An input is robust only if the model classifies it correctly and no configured attack fools
it (AutoAttack, Croce & Hein 2020; RobustBench). The best single attack over-states robustness
whenever the attacks break different inputs.

Attacks run in order as a cascade: each attack sees only the inputs every earlier attack
failed on (AutoAttack's trick: the later, costlier attacks only attack the few survivors).
The per-attack column is then the *cumulative* accuracy after that attack (the inputs that
resist it and every earlier one), not the attack's accuracy on its own. `cascade=False`
runs every attack on every correctly classified input instead, so each column is the attack's
own accuracy (costlier, for comparing attacks); the robust accuracy is the same either way
up to the attacks' randomness.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ipg_gnn.attacks.evasion import Attack, seed_attack_rng
from ipg_gnn.targets import predict


@dataclass(frozen=True)
class RobustReport:
    """The result of :func:`robust_accuracy`.

    `attack_acc[name]`: cumulative accuracy after the attack (cascade) or its own accuracy.
    `robust`: per input, True if correctly classified and no attack fooled it.
    `broken_by`: per input, the name of the first attack that fooled it, `"clean"` if it is
    misclassified without attack, `None` if robust.
    `x_adv`: per input, the adversarial example that fooled it (the clean input where none did).
    `seconds`: wall time per attack.
    """

    n: int
    clean_acc: float
    robust_acc: float
    attack_acc: dict[str, float]
    cascade: bool
    robust: torch.Tensor
    broken_by: list[str | None]
    x_adv: torch.Tensor
    seconds: dict[str, float]

    def summary(self) -> dict:
        """The report's numbers (no tensors), e.g. for a JSON report."""
        return {
            "n": self.n,
            "clean_acc": self.clean_acc,
            "robust_acc": self.robust_acc,
            "attack_acc": dict(self.attack_acc),
            "attack_acc_meaning": "cumulative" if self.cascade else "per attack",
            "seconds": dict(self.seconds),
        }


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Mapping[str, Attack],
    seed: int = 0,
    cascade: bool = True,
) -> RobustReport:
    """Robust accuracy of `model` on `(x, y)` under every attack of `attacks`, in order.

    Each attack's random generators are seeded with `seed` before it runs, so the report is
    deterministic for a deterministic model and attack order.
    """
    if not attacks:
        raise ValueError("robust_accuracy needs at least one attack")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    x, y = x.detach().cpu(), y.cpu()
    correct = predict(model, x) == y
    robust, x_adv = correct.clone(), x.clone()
    broken_by: list[str | None] = [None if c else "clean" for c in correct.tolist()]
    attack_acc, seconds = {}, {}
    for name, attack in attacks.items():
        idx = (robust if cascade else correct).nonzero().squeeze(1)
        start = time.perf_counter()
        hit, x_hit = _fooled(attack, model, x, y, idx, seed)
        seconds[name] = time.perf_counter() - start
        attack_acc[name] = (len(idx) - len(hit)) / len(x)
        for i, x_i in zip(hit.tolist(), x_hit, strict=True):
            if robust[i]:
                robust[i], x_adv[i], broken_by[i] = False, x_i, name
    return RobustReport(
        n=len(x),
        clean_acc=int(correct.sum()) / len(x),
        robust_acc=int(robust.sum()) / len(x),
        attack_acc=attack_acc,
        cascade=cascade,
        robust=robust,
        broken_by=broken_by,
        x_adv=x_adv,
        seconds=seconds,
    )


def _fooled(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `attack` on the inputs `idx`: the indices it fooled and its examples for them (the
    model's prediction is re-checked here, not taken from the attack). Every count is over the
    inputs attacked, so in a cascade the survivors after it are the cumulative accuracy."""
    if len(idx) == 0:
        return idx, x[:0]
    seed_attack_rng(seed)
    x_adv = attack(model, x[idx], y[idx]).x_adv.to(x.dtype).cpu()
    hit = predict(model, x_adv) != y[idx]
    return idx[hit], x_adv[hit]
