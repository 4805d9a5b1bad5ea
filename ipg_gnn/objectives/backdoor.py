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
the trigger (the default, trigger-free setting). Two terms use stamped versions of those inputs:
`consistency_weight` pulls the repaired units' outputs on them toward their clean values, and
`unlearning_weight` asks for their true labels (Neural Cleanse's unlearning). The loss's `stamp`
says which stamp: `known`, the true trigger (an upper bound: a trigger-blind defender cannot run
it), or `reversed`, the stamp reverse-engineered from the original model on the repair split's
clean fine-tuning inputs (`reversal` settings, :mod:`ipg_gnn.objectives.trigger_reversal`): the
suspect class's smallest stamp, which a defender who knows neither the trigger nor the target
class can make.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from art.attacks.poisoning import PoisoningAttackBackdoor
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.objectives.base import (
    ConsistencyLoss,
    Contrast,
    Contrasted,
    FitModel,
    Objective,
    SplitInputs,
)
from ipg_gnn.objectives.trigger_reversal import (
    Reversal,
    ReversedTrigger,
    draw_inputs,
    evaluating,
    reverse_class,
    reverse_engineer,
)
from ipg_gnn.runs.keys import config_key
from ipg_gnn.targets import predict

log = logging.getLogger(__name__)


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


@dataclass
class StampRefresh:
    """Neural Cleanse again, every `every` steps of a repair, for the `suspect` class only, on
    the model being repaired: a model that has unlearned one stamp can still answer to the rest
    of the trigger (a reversal finds the fewest pixels that flip the label, which may be a part of
    the trigger), and the stamp found on the half-repaired model names what is left. `x`: the
    clean inputs the reversal reads; `settings`: :func:`reverse_class`'s; `region`: where the
    mask may be non-zero (None: anywhere); `found`: each refresh's steps done before it, mask
    L1 norm and success on `x`."""

    x: torch.Tensor
    suspect: int
    every: int
    threshold: float | None
    seed: int
    settings: Mapping[str, Any]
    region: torch.Tensor | None = None
    found: list[dict[str, Any]] = field(default_factory=list)

    def due(self, step: int) -> bool:
        """Whether step `step` (counted from 1) starts with a refresh: the first step after
        every `every` steps done, so a schedule's end never pays for a stamp no step would use."""
        return step > 1 and (step - 1) % self.every == 0

    def __call__(self, model: nn.Module, step: int) -> ReversedTrigger | None:
        """The suspect's stamp on `model` now (binarized at `threshold` when there is one), or
        None when binarizing leaves it empty (nothing left strong enough to stamp)."""
        with evaluating(model):
            stamp, norm, rate = reverse_class(
                model,
                self.x,
                self.suspect,
                seed=self.seed + step,
                region=self.region,
                **self.settings,
            )
        if self.threshold is not None:
            stamp = stamp.binarized(self.threshold)
        empty = not bool(stamp.mask.any())
        done = step - 1
        self.found.append({"after_steps": done, "mask_l1": norm, "success": rate, "empty": empty})
        log.info("stamp refreshed after %d steps: mask L1 %.1f, success %.2f", done, norm, rate)
        return None if empty else stamp


def stamp_region(mask: torch.Tensor, threshold: float, window: int) -> torch.Tensor:
    """The pixels within `window` (Chebyshev distance) of a mask (1, H, W) at `threshold` or
    more: where the rest of a trigger whose part the mask found can lie."""
    strong = (mask >= threshold).to(mask.dtype)[None]
    return nn.functional.max_pool2d(strong, 2 * window + 1, stride=1, padding=window)[0, 0]


class BackdoorLoss(ConsistencyLoss):
    """Cross-entropy on clean inputs, plus two terms on the same inputs stamped by `stamp`:
    (`consistency_weight` > 0) the squared distance of the repaired `units`' outputs to their
    clean outputs, and (`unlearning_weight` > 0) cross-entropy against the true labels. With a
    `refresh`, the stamps it finds during the repair join `stamp`, and each input of a batch gets
    one of them in turn."""

    def __init__(
        self,
        stamp: Callable[[torch.Tensor], torch.Tensor],
        units: Mapping[str, Sequence[int]],
        clean_weight: float = 1.0,
        consistency_weight: float = 0.0,
        unlearning_weight: float = 0.0,
        refresh: StampRefresh | None = None,
    ) -> None:
        self.stamps, self.clean_weight = [stamp], clean_weight
        self.unlearning_weight, self.refresh = unlearning_weight, refresh
        super().__init__(units, consistency_weight)

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        """The consistency term's hooks, and the first stamp only: the stamps a refresh finds
        belong to the fine-tuning run that found them, so a loss scored again (a look-ahead's
        loss before and after, its next trial) starts from the same stamp each time."""
        del self.stamps[1:]
        with self.consistency.attach(model):
            yield

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with input i stamped by stamp i mod (number of stamps)."""
        if len(self.stamps) == 1:
            return self.stamps[0](x)
        out = x.clone()
        for i, stamp in enumerate(self.stamps):
            out[i :: len(self.stamps)] = stamp(x[i :: len(self.stamps)])
        return out

    def __call__(self, model: nn.Module, batch: Images, step: int) -> torch.Tensor:
        x, y = batch.x, batch.y
        if self.refresh is not None and self.refresh.due(step):
            found = self.refresh(model, step)
            if found is not None:
                self.stamps.append(found)
        loss = self.clean_weight * nn.functional.cross_entropy(model(x), y)
        if not (self.consistency.weight or self.unlearning_weight):
            return loss
        clean = self.consistency.clean()
        stamped = model(self.stamp(x))
        unlearning = self.unlearning_weight * nn.functional.cross_entropy(stamped, y)
        return loss + unlearning + self.consistency(clean)


#: The reversal settings that shape the stamp a repair uses rather than the optimisation: its
#: `mask_threshold`, how often a repair reverses the suspect class again (`refresh_every` steps)
#: and how near the first stamp (`refresh_window` pixels).
STAMP_SETTINGS = ("mask_threshold", "refresh_every", "refresh_window")
#: What `objective.reversal` may set: the optimisation's keyword settings and `STAMP_SETTINGS`
#: (the model, inputs, classes and seed come from the repair).
REVERSAL_SETTINGS = (
    set(inspect.signature(reverse_engineer).parameters)
    | set(inspect.signature(reverse_class).parameters)
    | set(STAMP_SETTINGS)
) - {"model", "x", "num_classes", "target", "seed", "settings", "region"}


#: How many clean inputs a reversal reads unless `objective.reversal.max_inputs` says.
MAX_INPUTS = inspect.signature(reverse_engineer).parameters["max_inputs"].default


def check_stamp(stamp: str) -> str:
    """Refuse a stamp name the loss does not know (at configuration, before any work)."""
    if stamp not in ("known", "reversed"):
        raise ConfigError(f"objective.loss.stamp must be known or reversed; got {stamp!r}")
    return stamp


def check_reversal_settings(settings: Mapping[str, Any]) -> None:
    """Refuse reversal settings :func:`reverse_engineer` would reject only when first run
    (which, in a repair, comes after other methods' work)."""
    known = REVERSAL_SETTINGS
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"objective.reversal sets unknown settings {unknown}; known: {', '.join(sorted(known))}"
        )
    threshold = settings.get("mask_threshold")
    if threshold is not None and not 0 < threshold <= 1:
        raise ConfigError(f"objective.reversal.mask_threshold must be in (0, 1]; got {threshold}")
    every = settings.get("refresh_every")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigError(
            f"objective.reversal.refresh_every must be a positive step count; got {every}"
        )
    window = settings.get("refresh_window")
    if window is not None and (not isinstance(window, int) or window < 0):
        raise ConfigError(
            f"objective.reversal.refresh_window must be a pixel count >= 0; got {window}"
        )


class Backdoor(Objective):
    """Clean vs triggered inputs of a target trained on poisoned data. `trigger`: an ART
    perturbation (a callable on numpy images); `target_class`: the label poisoned inputs get;
    `poison_fraction`: of the training set; `loss`: the repair loss's default settings (see
    :class:`BackdoorLoss`; `stamp`: `known` or `reversed`); `reversal`: settings of
    :func:`reverse_engineer`, run when a repair loss first asks for the reversed stamp."""

    reference = "clean"
    noun = "trigger"

    def __init__(
        self,
        trigger: Callable[[np.ndarray], np.ndarray],
        target_class: int = 0,
        poison_fraction: float = 0.1,
        loss: Mapping[str, Any] | None = None,
        reversal: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 <= poison_fraction < 1:
            raise ValueError(f"poison_fraction must be in [0, 1); got {poison_fraction}")
        self.trigger = Trigger(trigger)
        self.target_class, self.poison_fraction = target_class, poison_fraction
        self.key = config_key({**self.trigger.settings, "target_class": target_class})[:8]
        self.loss = dict(loss or {})
        check_stamp(self.loss.get("stamp", "known"))
        self.reversal_settings = dict(reversal or {})
        check_reversal_settings(self.reversal_settings)
        self.reversal: Reversal | None = None  # made on first use by reversed_trigger
        self.reversal_source: tuple[nn.Module, torch.Tensor, int] | None = None
        #: Each repair loss's refreshed stamps (`StampRefresh.found`) since `draw_notes`.
        self.refreshes: list[list[dict[str, Any]]] = []

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
            **self.scores(y, reference["pred"], triggered["pred"]),
        }

    def scores(
        self, y: torch.Tensor, clean: torch.Tensor, triggered: torch.Tensor | None = None
    ) -> dict[str, float]:
        """The metrics of predictions on clean inputs and, when given, on their triggered
        versions: one definition for train.py's stored IPGs and repair.py's evaluations."""
        scores = {
            "clean_acc": float((clean == y).float().mean()),
            "clean_to_target": attack_success_rate(clean, y, self.target_class),
        }
        if triggered is not None:
            scores["asr"] = attack_success_rate(triggered, y, self.target_class)
            scores["triggered_acc"] = float((triggered == y).float().mean())
        return scores

    def format_population_report(self, report: Mapping[str, Any]) -> str:
        return "\n".join(
            [
                f"clean accuracy      {report['clean_acc']:7.2%}   (test split, n={report['n']})",
                f"triggered accuracy  {report['triggered_acc']:7.2%}",
                f"attack success rate {report['asr']:7.2%}   (triggered inputs not of class "
                f"{report['target_class']} predicted as it)",
                f"clean to target     {report['clean_to_target']:7.2%}   (the same inputs without "
                "the trigger: the ASR if the trigger did nothing)",
            ]
        )

    def population_metrics(self, report: Mapping[str, Any]) -> dict[str, float]:
        return {
            "test/clean_acc": report["clean_acc"],
            "test/asr": report["asr"],
            "test/clean_to_target": report["clean_to_target"],
            "test/triggered_acc": report["triggered_acc"],
        }

    def repair_set(
        self, fine_tune: Images, inputs: SplitInputs, fit: FitModel, seed: int, model: nn.Module
    ) -> Images:
        """The fine-tuning part as it is; the original `model` and these clean inputs are kept
        for the reversal a loss with `stamp: reversed` asks for (a reversal of an earlier
        model is dropped)."""
        self.reversal_source, self.reversal = (model, fine_tune.x, seed), None
        self.refreshes = []
        return fine_tune

    def reversed_trigger(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The suspect class's stamp from Neural Cleanse on the original model and the clean
        fine-tuning inputs (every class tried: the defender does not know the target class),
        run once per repair; binarized at `mask_threshold` when the reversal settings give
        one."""
        if self.reversal is None:
            if self.reversal_source is None:
                raise ConfigError("a reversed stamp needs Backdoor.repair_set first")
            model, x, seed = self.reversal_source
            settings = {k: v for k, v in self.reversal_settings.items() if k not in STAMP_SETTINGS}
            self.reversal = reverse_engineer(model, x, seed=seed, **settings)
            if self.reversal.suspect not in self.reversal.flagged:
                log.warning(
                    "Neural Cleanse flags no class as a backdoor's target (largest anomaly "
                    "index %.2f <= %.1f); the repair unlearns the smallest stamp, class %d's",
                    max(self.reversal.anomaly),
                    self.reversal.threshold,
                    self.reversal.suspect,
                )
        stamp = self.reversal.triggers[self.reversal.suspect]
        threshold = self.reversal_settings.get("mask_threshold")
        if threshold is None:
            return stamp
        binary = stamp.binarized(threshold)
        if not binary.mask.any():
            raise ConfigError(
                f"objective.reversal.mask_threshold={threshold} leaves the reversed stamp empty "
                f"(its largest mask value is {float(stamp.mask.max()):.2f}); lower it or set it "
                "to null"
            )
        return binary

    def repair_artifacts(self, out: Path) -> dict[str, Any]:
        """The reversal's plot (`reversed_trigger.png`) and summary, if one ran."""
        if self.reversal is None:
            return {}
        self.reversal.plot(out / "reversed_trigger.png")
        return {"reversal": self.reversal.summary()}

    def draw_notes(self) -> dict[str, Any]:
        """The stamps refreshed during the draw (one list per repair loss it made)."""
        made, self.refreshes = self.refreshes, []
        return {"refreshed_stamps": made} if made else {}

    def check_loss(self, settings: Mapping[str, Any]) -> None:
        check_stamp(settings.get("stamp", "known"))

    def repair_loss(
        self, units: Mapping[str, Sequence[int]], seed: int, **settings
    ) -> BackdoorLoss:
        settings = {**self.loss, **settings}
        stamp = check_stamp(settings.pop("stamp", "known"))
        stamped = settings.get("consistency_weight", 0) or settings.get("unlearning_weight", 0)
        if stamp == "known" or not stamped:  # no term reads the stamp: no reversal to run
            return BackdoorLoss(self.trigger, units, **settings)
        return BackdoorLoss(
            self.reversed_trigger(), units, refresh=self.stamp_refresh(), **settings
        )

    def stamp_refresh(self) -> StampRefresh | None:
        """What reverses the suspect class again during a repair (`refresh_every` steps), on
        the inputs the first reversal read; None when the settings ask for no refresh."""
        every = self.reversal_settings.get("refresh_every")
        if every is None:
            return None
        assert self.reversal is not None and self.reversal_source is not None
        _, x, seed = self.reversal_source
        settings = {
            k: v
            for k, v in self.reversal_settings.items()
            if k in inspect.signature(reverse_class).parameters
        }
        threshold = self.reversal_settings.get("mask_threshold")
        window = self.reversal_settings.get("refresh_window")
        first = self.reversal.triggers[self.reversal.suspect]
        refresh = StampRefresh(
            draw_inputs(x, self.reversal_settings.get("max_inputs", MAX_INPUTS), seed),
            self.reversal.suspect,
            every,
            threshold,
            seed,
            settings,
            None if window is None else stamp_region(first.mask, threshold or 0.5, window),
        )
        self.refreshes.append(refresh.found)
        return refresh

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
        """Clean accuracy, the share of clean inputs of other classes sent to the target class
        (the ASR if the trigger did nothing) and, unless `only` leaves it out, the ASR and
        accuracy on the triggered inputs. Triggered inputs do not depend on the model, so
        `transfer_from` adds nothing and is ignored."""
        clean = predict(model, images.x, batch_size)
        if only is not None and "triggered" not in only:
            return {"n": len(images), **self.scores(images.y, clean)}, {}
        triggered = self.contrasts()["triggered"](model, images.x, images.y, seed)
        report = {"n": len(images), **self.scores(images.y, clean, triggered.pred)}
        return report, {"triggered": triggered.x}

    def columns(self, result: Mapping[str, Any], validation: bool = False) -> dict[str, str]:
        cells = {"clean": f"{result['clean_acc']:.2%}"}
        if "asr" in result:
            cells["ASR"] = f"{result['asr']:.2%}"
            cells["clean to target"] = f"{result['clean_to_target']:.2%}"
            cells["triggered acc"] = f"{result['triggered_acc']:.2%}"
        return cells

    def report_note(self, notes: Mapping[str, Any]) -> str:
        note = (
            "ASR: attack success rate, triggered inputs not of the target class "
            f"({self.target_class}) classified as it. Clean to target: the same inputs without "
            "the trigger classified as it (the model's own confusion: the ASR if the trigger "
            "did nothing). Triggered acc: accuracy on triggered inputs against their "
            "true labels."
        )
        if "reversal" not in notes:
            return note
        r = notes["reversal"]
        suspect, norms = r["suspect"], r["mask_l1"]
        return note + (
            f" Reversed trigger (Neural Cleanse on the fine-tuning part): suspect class "
            f"{suspect}, mask L1 {norms[suspect]:.1f} (median {float(np.median(norms)):.1f}), "
            f"anomaly index {r['anomaly_index'][suspect]:.2f}, flagged classes {r['flagged']}; "
            "see reversed_trigger.png."
        )
