"""Backdoor: clean inputs contrasted with the same inputs carrying a trigger.

The target is trained on poisoned data (`training_set`): a `poison_fraction` of the training set,
drawn from inputs not of `target_class`, is stamped with the trigger (ART's
`PoisoningAttackBackdoor` with a pixel pattern, `art.attacks.poisoning.perturbations`) and
relabelled `target_class` (BadNets, Gu et al. 2017). The contrast population `triggered` is the
same inputs with the trigger; a triggered input of another class that the model puts in
`target_class` is a success of the backdoor. The headline numbers are clean accuracy and the
**attack success rate** (ASR): the fraction of triggered inputs not of `target_class` that the
model classifies as `target_class`.

Repair minimises cross-entropy on clean inputs of the repair split: the defender does not know
the trigger (the default, trigger-free setting). With `consistency_weight` > 0 it also pulls the
repaired units' outputs on triggered inputs toward their clean values: the setting in which the
defender holds triggered versions of its inputs (here made with the true trigger, standing in for
a set of detected or reverse-engineered triggered inputs); it is an upper bound, not a defence a
trigger-blind defender can run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from art.attacks.poisoning import PoisoningAttackBackdoor
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.objectives.base import ConsistencyLoss, Contrast, Contrasted, Objective
from ipg_gnn.runs.keys import config_key
from ipg_gnn.targets import accuracy, predict


def attack_success_rate(pred: torch.Tensor, y: torch.Tensor, target_class: int) -> float:
    """Fraction of inputs whose true label is not `target_class` predicted as `target_class`
    (NaN when every input is of `target_class`)."""
    others = y != target_class
    return float((pred[others] == target_class).float().mean())


class Trigger:
    """A trigger stamped on images (N, C, H, W) by ART's `PoisoningAttackBackdoor`;
    `perturbation` is one of ART's (`add_pattern_bd`, `add_single_bd`), which take images
    channels last (N, H, W, C), so the images are handed over in that layout."""

    def __init__(self, perturbation: Callable[[np.ndarray], np.ndarray]) -> None:
        self.attack = PoisoningAttackBackdoor(perturbation)
        func = getattr(perturbation, "func", perturbation)
        settings = getattr(perturbation, "keywords", {})
        self.settings = {"perturbation": f"{func.__module__}.{func.__qualname__}", **settings}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.detach().cpu().permute(0, 2, 3, 1).numpy()
        stamped, _ = self.attack.poison(channels_last, np.zeros(len(x)))
        return torch.from_numpy(stamped).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)


class TriggerContrast(Contrast):
    """The inputs with the trigger; success: an input not of `target_class` predicted as it."""

    def __init__(self, trigger: Trigger, target_class: int, key: str) -> None:
        super().__init__("triggered", key)
        self.trigger, self.target_class = trigger, target_class

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> Contrasted:
        triggered = self.trigger(x)
        pred = predict(model, triggered).to(y.device)
        return Contrasted(triggered, pred, (y != self.target_class) & (pred == self.target_class))


class BackdoorLoss(ConsistencyLoss):
    """Cross-entropy on clean inputs, plus (`consistency_weight` > 0) the squared distance of
    the repaired `units`' outputs on triggered inputs to their clean outputs."""

    def __init__(
        self,
        trigger: Trigger,
        units: Mapping[str, Sequence[int]],
        clean_weight: float = 1.0,
        consistency_weight: float = 0.0,
    ) -> None:
        self.trigger, self.clean_weight = trigger, clean_weight
        super().__init__(units, consistency_weight)

    def __call__(self, model: nn.Module, batch: Images, step: int) -> torch.Tensor:
        x, y = batch.x, batch.y
        loss = self.clean_weight * nn.functional.cross_entropy(model(x), y)
        if not self.consistency.weight:
            return loss
        clean = self.consistency.clean()
        model(self.trigger(x))
        return loss + self.consistency(clean)


class Backdoor(Objective):
    """Clean vs triggered inputs of a target trained on poisoned data. `trigger`: an ART
    perturbation (a callable on numpy images); `target_class`: the label poisoned inputs get;
    `poison_fraction`: of the training set; `loss`: the repair loss's default settings (see
    :class:`BackdoorLoss`)."""

    reference = "clean"
    noun = "trigger"

    def __init__(
        self,
        trigger: Callable[[np.ndarray], np.ndarray],
        target_class: int = 0,
        poison_fraction: float = 0.1,
        loss: Mapping[str, float] | None = None,
    ) -> None:
        if not 0 <= poison_fraction < 1:
            raise ValueError(f"poison_fraction must be in [0, 1); got {poison_fraction}")
        self.trigger = Trigger(trigger)
        self.target_class, self.poison_fraction = target_class, poison_fraction
        self.key = config_key({**self.trigger.settings, "target_class": target_class})[:8]
        self.loss = dict(loss or {})

    def contrasts(self) -> dict[str, Contrast]:
        return {"triggered": TriggerContrast(self.trigger, self.target_class, self.key)}

    def training_set(self, images: Images, seed: int) -> Images:
        """`images` with a `poison_fraction` of them, drawn (seeded) among inputs not of
        `target_class`, triggered and relabelled `target_class`."""
        others = (images.y != self.target_class).nonzero().flatten().numpy()
        n = int(round(self.poison_fraction * len(images)))
        if n > len(others):
            raise ValueError(
                f"poison_fraction {self.poison_fraction} asks for more inputs than "
                f"the {len(others)} not of class {self.target_class}"
            )
        chosen = torch.as_tensor(np.sort(np.random.default_rng(seed).choice(others, n, False)))
        x, y = images.x.clone(), images.y.clone()
        if n:
            x[chosen] = self.trigger(x[chosen])
            y[chosen] = self.target_class
        return Images(x, y)

    def population_report(
        self, reference: Mapping[str, torch.Tensor], contrasts: Mapping[str, Mapping]
    ) -> dict[str, Any]:
        triggered = contrasts["triggered"]
        if not torch.equal(triggered["source_index"], reference["source_index"]):
            raise ValueError("the populations' stores hold other inputs or another order")
        y = reference["true_label"]
        return {
            "n": len(y),
            "target_class": self.target_class,
            "clean_acc": float((reference["pred"] == y).float().mean()),
            "asr": attack_success_rate(triggered["pred"], y, self.target_class),
            "triggered_acc": float((triggered["pred"] == y).float().mean()),
        }

    def format_population_report(self, report: Mapping[str, Any]) -> str:
        return "\n".join(
            [
                f"clean accuracy      {report['clean_acc']:7.2%}   (test split, n={report['n']})",
                f"triggered accuracy  {report['triggered_acc']:7.2%}",
                f"attack success rate {report['asr']:7.2%}   (triggered inputs not of class "
                f"{report['target_class']} predicted as it)",
            ]
        )

    def population_metrics(self, report: Mapping[str, Any]) -> dict[str, float]:
        return {
            "test/clean_acc": report["clean_acc"],
            "test/asr": report["asr"],
            "test/triggered_acc": report["triggered_acc"],
        }

    def repair_loss(
        self, units: Mapping[str, Sequence[int]], seed: int, **settings
    ) -> BackdoorLoss:
        return BackdoorLoss(self.trigger, units, **{**self.loss, **settings})

    def evaluation_names(self) -> list[str]:
        return ["triggered"]

    def evaluate(
        self,
        model: nn.Module,
        images: Images,
        batch_size: int,
        seed: int,
        only: Sequence[str] | None = None,
        transfer_from: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Clean accuracy and, unless `only` leaves it out, the ASR and accuracy on the
        triggered inputs. Triggered inputs do not depend on the model, so `transfer_from` adds
        nothing and is ignored."""
        report: dict[str, Any] = {
            "n": len(images),
            "clean_acc": accuracy(model, images, batch_size),
        }
        if only is not None and "triggered" not in only:
            return report, {}
        triggered = self.contrasts()["triggered"](model, images.x, images.y, seed)
        report["asr"] = attack_success_rate(triggered.pred, images.y, self.target_class)
        report["triggered_acc"] = float((triggered.pred == images.y).float().mean())
        return report, {"triggered": triggered.x}

    def columns(self, result: Mapping[str, Any], validation: bool = False) -> dict[str, str]:
        cells = {"clean": f"{result['clean_acc']:.2%}"}
        if "asr" in result:
            cells["ASR"] = f"{result['asr']:.2%}"
            cells["triggered acc"] = f"{result['triggered_acc']:.2%}"
        return cells

    def report_note(self) -> str:
        return (
            "ASR: attack success rate, triggered inputs not of the target class "
            f"({self.target_class}) classified as it. Triggered acc: accuracy on triggered "
            "inputs against their true labels."
        )
