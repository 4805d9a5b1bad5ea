"""Adversarial robustness: benign inputs contrasted with their adversarial versions.

Contrast populations are the configured attacks (ART, crafted against the model at hand).
Repair minimises cross-entropy on clean inputs and on adversarial inputs crafted against the
model being repaired at that step, plus an optional consistency term that keeps the repaired
units' outputs on an adversarial input close to their clean values (the idea of Dong et al.,
"Towards Interpretable Deep Neural Networks by Leveraging Adversarial Examples"). Evaluation
re-crafts every attack against the model evaluated (adaptive white-box for the gradient attacks;
Square is gradient-free and exposes gradient masking); accuracy on adversarial examples crafted
against another model (the original) is reported separately, as `transfer`.

The headline is **robust accuracy**: the fraction of inputs that the model gets right and that no
configured attack fools (the per-input worst case; AutoAttack, RobustBench), over the report's
attacks and, in an evaluation, the `ensemble` (`robust_eval`: APGD-CE, APGD-DLR with restarts,
Square) run as a cascade on the inputs still standing. Each attack's own accuracy stays beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from ipg_gnn.attacks import Attack, robust_accuracy, sanity_checks, seed_attack_rng
from ipg_gnn.data import Images
from ipg_gnn.objectives.base import ConsistencyLoss, Contrast, Contrasted, Objective
from ipg_gnn.runs.keys import config_key, plain
from ipg_gnn.targets import accuracy, predict


class AttackContrast(Contrast):
    """Adversarial versions of the inputs under one attack."""

    def __init__(self, name: str, attack: Attack, key: str) -> None:
        super().__init__(name, key)
        self.attack = attack

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> Contrasted:
        seed_attack_rng(seed)
        result = self.attack(model, x, y)
        return Contrasted(result.x_adv, result.pred, result.success)


class AdversarialLoss(ConsistencyLoss):
    """Cross-entropy on clean and on freshly crafted adversarial inputs, plus the consistency
    term on `units` (layer -> unit indices) when `consistency_weight` > 0."""

    def __init__(
        self,
        attack: Attack,
        units: Mapping[str, Sequence[int]],
        seed: int,
        clean_weight: float = 1.0,
        adv_weight: float = 1.0,
        consistency_weight: float = 0.0,
    ) -> None:
        self.attack, self.units, self.seed = attack, units, seed
        self.clean_weight, self.adv_weight = clean_weight, adv_weight
        super().__init__(units, consistency_weight)

    def __call__(self, model: nn.Module, batch: Images, step: int) -> torch.Tensor:
        x, y = batch.x, batch.y
        seed_attack_rng(self.seed + step - 1)
        x_adv = self.attack(model, x, y).x_adv.to(x.device)
        ce = nn.functional.cross_entropy
        loss = self.clean_weight * ce(model(x), y)
        clean_units = self.consistency.clean()
        loss = loss + self.adv_weight * ce(model(x_adv), y)
        loss = loss + self.consistency(clean_units)
        return loss


class Robustness(Objective):
    """Benign vs adversarial inputs. `attacks`: attack configs (or built `Attack`s) by name
    (contrast populations in train.py, the evaluation attacks in repair.py); `ensemble`: the
    attacks robust accuracy is also taken over in an evaluation (`robust_eval`); `train_attack`:
    the attack crafted at every repair step; `loss`: the repair loss's default settings (see
    :class:`AdversarialLoss`); `sanity`: settings of the sanity checks every full evaluation
    runs (:func:`ipg_gnn.attacks.sanity_checks` on its first `n` inputs, with the ensemble's
    `gradient` and `gradient_free` attacks; see `conf/robust_eval/`)."""

    reference = "benign"
    noun = "attack"

    def __init__(
        self,
        attacks: Mapping[str, Any],
        ensemble: Mapping[str, Any] | None = None,
        train_attack: Any = None,
        loss: Mapping[str, float] | None = None,
        sanity: Mapping[str, Any] | None = None,
    ) -> None:
        self.ensemble = {
            n: a if isinstance(a, Attack) else instantiate(a, name=n)
            for n, a in (ensemble or {}).items()
        }
        self.attacks = {
            n: a if isinstance(a, Attack) else instantiate(a, name=n) for n, a in attacks.items()
        }
        # Built attacks (from Python) are keyed by what they print: their ART settings.
        self.keys = {
            n: config_key(
                {"attack": repr(a), "art": str(a.art_attack)} if isinstance(a, Attack) else plain(a)
            )[:8]
            for n, a in attacks.items()
        }
        self.train_attack: Attack | None = (
            instantiate(train_attack) if isinstance(train_attack, DictConfig) else train_attack
        )
        self.loss = dict(loss or {})
        self.sanity = dict(sanity or {})
        for role in ("gradient", "gradient_free"):
            if self.sanity and self.sanity[role] not in self.ensemble:
                raise ValueError(
                    f"objective.sanity.{role}={self.sanity[role]!r} is not an attack of the "
                    f"robust_eval ensemble ({', '.join(self.ensemble)})"
                )

    def contrasts(self) -> dict[str, Contrast]:
        return {n: AttackContrast(n, a, self.keys[n]) for n, a in self.attacks.items()}

    def population_report(
        self, reference: Mapping[str, torch.Tensor], contrasts: Mapping[str, Mapping]
    ) -> dict[str, Any]:
        def correct(meta: Mapping[str, torch.Tensor]) -> torch.Tensor:
            if not torch.equal(meta["source_index"], reference["source_index"]):
                raise ValueError("the populations' stores hold other inputs or another order")
            return meta["pred"] == meta["true_label"]

        def acc(meta: Mapping[str, torch.Tensor]) -> float:
            return float(correct(meta).float().mean())

        robust = correct(reference)
        for meta in contrasts.values():
            robust &= correct(meta)
        return {
            "n": len(reference["pred"]),
            "robust_acc": float(robust.float().mean()),
            "adv_acc": {n: acc(m) for n, m in contrasts.items()},
            "eps": {n: self.attacks[n].eps for n in contrasts},
            "attack_success_rate": {
                n: float(m["success"].float().mean()) for n, m in contrasts.items()
            },
            "clean_acc": acc(reference),
        }

    def format_population_report(self, report: Mapping[str, Any]) -> str:
        lines = [
            f"{'':10s} {'eps':>6s} {'accuracy':>9s}   (test split, n={report['n']})",
            f"{'clean':10s} {'-':>6s} {report['clean_acc']:9.2%}",
        ]
        for name, acc in report["adv_acc"].items():
            eps = report["eps"][name]
            lines.append(f"{name:10s} {'-' if eps is None else f'{eps:.3g}':>6s} {acc:9.2%}")
        lines.append(f"{'robust':10s} {'':>6s} {report['robust_acc']:9.2%}   (no attack fools it)")
        return "\n".join(lines)

    def population_metrics(self, report: Mapping[str, Any]) -> dict[str, float]:
        return {
            "test/clean_acc": report["clean_acc"],
            "test/robust_acc": report["robust_acc"],
            **{f"test/adv_acc/{k}": v for k, v in report["adv_acc"].items()},
        }

    def repair_loss(
        self, units: Mapping[str, Sequence[int]], seed: int, **settings
    ) -> AdversarialLoss:
        if self.train_attack is None:
            raise ValueError("a robustness repair needs objective.train_attack")
        return AdversarialLoss(self.train_attack, units, seed, **{**self.loss, **settings})

    def evaluation_names(self) -> list[str]:
        return list(self.attacks)

    def evaluate(
        self,
        model: nn.Module,
        images: Images,
        batch_size: int,
        seed: int,
        only: Sequence[str] | None = None,
        transfer_from: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Clean accuracy, accuracy under every attack re-crafted against `model` (each
        attack's random start seeded with `seed`) and robust accuracy (the per-input worst case
        over them and, unless `only` picks a few, the ensemble), plus accuracy on
        `transfer_from`."""
        report: dict[str, Any] = {
            "n": len(images),
            "clean_acc": accuracy(model, images, batch_size),
            "adv_acc": {},
            "attack_success_rate": {},
            "eps": {},
        }
        examples = {}
        robust = predict(model, images.x, batch_size) == images.y
        for name in only if only is not None else self.attacks:
            result = self.contrasts()[name](model, images.x, images.y, seed)
            examples[name] = result.x
            robust &= result.pred == images.y
            report["adv_acc"][name] = float((result.pred == images.y).float().mean())
            report["attack_success_rate"][name] = float(result.success.float().mean())
            report["eps"][name] = self.attacks[name].eps
        if self.ensemble and only is None:
            survivors = robust.nonzero().flatten()
            if len(survivors):
                x, y = images.x[survivors], images.y[survivors]
                ensemble = robust_accuracy(model, x, y, self.ensemble, seed)
                robust[survivors] = ensemble.robust
                report["ensemble"] = {**ensemble.summary(), "attacked": len(survivors)}
            if self.sanity:
                report["sanity"] = self.sanity_checks(model, images, seed)
        report["robust_acc"] = float(robust.float().mean())
        report["gradient_masking"] = self.masking_flag(report["adv_acc"])
        if transfer_from:
            report["transfer_acc"] = {
                name: accuracy(model, Images(x, images.y), batch_size)
                for name, x in transfer_from.items()
            }
        return report, examples

    def sanity_checks(self, model: nn.Module, images: Images, seed: int) -> dict[str, Any]:
        """The sanity checks on the first `sanity.n` inputs (see the class docstring)."""
        settings = {
            k: v for k, v in self.sanity.items() if k not in ("n", "gradient", "gradient_free")
        }
        n = self.sanity["n"]
        return sanity_checks(
            model,
            images.x[:n],
            images.y[:n],
            self.ensemble[self.sanity["gradient"]],
            self.ensemble[self.sanity["gradient_free"]],
            seed=seed,
            **settings,
        )

    def masking_flag(self, adv_acc: Mapping[str, float], gap: float = 0.05) -> bool | None:
        """True when a gradient-free attack leaves clearly less accuracy (by more than `gap`)
        than the best gradient attack: the gradients mislead, so every gradient number is
        suspect (None without both kinds of attack)."""
        free = [a for n, a in adv_acc.items() if not self.attacks[n].uses_gradients]
        grad = [a for n, a in adv_acc.items() if self.attacks[n].uses_gradients]
        return min(free) < min(grad) - gap if free and grad else None

    def columns(self, result: Mapping[str, Any], validation: bool = False) -> dict[str, str]:
        robust = f"{result['robust_acc']:.2%}" + (
            " (masking?)" if result.get("gradient_masking") else ""
        )
        cells = {"clean": f"{result['clean_acc']:.2%}", "robust": robust}
        if "sanity" in result:
            failed = [k for k, ok in result["sanity"]["checks"].items() if not ok]
            cells["sanity"] = "ok" if not failed else "fails " + ", ".join(failed)
        attacks = list(result["adv_acc"])
        if validation:
            return cells | {a: f"{result['adv_acc'][a]:.2%}" for a in attacks}
        transfer = result.get("transfer_acc", {})
        cells |= {f"{a} (adaptive)": f"{result['adv_acc'][a]:.2%}" for a in attacks}
        return cells | {
            f"{a} (transfer)": f"{transfer[a]:.2%}" if a in transfer else "-" for a in attacks
        }

    def report_note(self, notes: Mapping[str, Any]) -> str:
        ensemble = ", ".join(self.ensemble) or "none"
        return (
            "Robust: inputs no attack fools (per-input worst case over the attacks below and the "
            f"ensemble: {ensemble}; on validation, over the validation attacks). Adaptive: "
            "attacks re-crafted against each model. Transfer: the original model's adversarial "
            "examples. 'masking?': a gradient-free attack beat every gradient attack by more "
            "than 5 points (gradient masking suspected). Sanity: accuracy falls with eps to "
            "about 0, more iterations never help the model, the gradient-free attack is not "
            "much stronger (see docs/robust_eval.md); a failed check names itself."
        )
