"""Membership inference: the IPGs of the target's training members contrasted with non-members.

The populations are *members* (inputs of the `target_train` split, which the target was trained
on) and *non-members* (inputs of the IPG split itself, which it never saw), balanced. The
members of each IPG split are a disjoint part of `target_train` (`parts`: the fraction of
`target_train` each IPG split draws), so the audit's own train, validation and test parts
never share a member; each split's non-members are a seeded random sample of that split's
inputs of the same size. Neither population is changed against the model, and a member graph
pairs with no non-member graph (`paired` False). The stages see only two populations of
inputs: the GNN trained to tell their IPGs apart is a white-box membership attack.

The attacks it is compared with score an input from the target's output alone (`attack_scores`:
minus the loss, Yeom et al. 2018; the true class's confidence; minus the prediction entropy)
or from shadow models (`lira_offline`, Carlini et al. 2022); `detect.metrics.attack_metrics`
reports them as the field does: AUC, balanced accuracy, TPR at low FPR.

A privacy repair fine-tunes on the target's training members and as many held-out inputs of the
repair split (`Membership.repair_set`) with `PrivacyLoss`, which distils each member toward what
reference models that never saw it predict (the idea of SELENA's self-distillation, Tang et al.
2022) and pulls the repaired units' activations on members onto those on held-out inputs. Its
plan contrasts the members and non-members of the `repair` split (`parts["repair"]`), which the
audit never scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.objectives.base import (
    Contrast,
    Contrasted,
    FitModel,
    Objective,
    Population,
    Selection,
    SplitInputs,
    UnitOutputs,
)
from ipg_gnn.runs.keys import config_key
from ipg_gnn.targets import accuracy, batched_logits, logit_confidence, predict

log = logging.getLogger(__name__)

#: Splits whose IPGs may hold members (`target_train` itself is where members come from).
AUDIT_SPLITS = ("ipg_train", "ipg_val", "repair", "test")
#: The audit's own parts: attacks fitted, thresholds chosen, numbers measured (the `repair`
#: split's populations only serve a privacy repair's plan).
FIT, SELECT, TEST = "ipg_train", "ipg_val", "test"
#: Groups of `Images.groups` in a repair set: members (1) or held-out inputs (0), and each
#: input's position in the set (the row of its soft target).
MEMBER, POSITION = "member", "position"


class AuditParts:
    """Which inputs each IPG split's populations hold: `parts[split]` is the fraction of
    `target_train` (seeded permutation, cut in `AUDIT_SPLITS` order) whose inputs are that
    split's members; as many of the split's own inputs (seeded sample) are its non-members."""

    def __init__(self, parts: Mapping[str, float], seed: int) -> None:
        unknown = sorted(set(parts) - set(AUDIT_SPLITS))
        if unknown:
            raise ConfigError(
                f"objective.parts names splits {unknown}; members can be drawn for "
                f"{list(AUDIT_SPLITS)}"
            )
        bad = {k: v for k, v in parts.items() if not 0 < v <= 1}
        if bad or sum(parts.values()) > 1 + 1e-9:
            raise ConfigError(
                "objective.parts: every fraction must lie in (0, 1] and together at most 1 "
                f"(each member belongs to one split); got {dict(parts)}"
            )
        self.parts = {s: float(parts[s]) for s in AUDIT_SPLITS if s in parts}
        self.seed = seed
        self.key = config_key({"parts": self.parts, "seed": seed})

    def _block(self, split: str, members: int) -> tuple[int, int]:
        if split not in self.parts:
            raise ConfigError(
                f"objective.parts has no fraction for split {split!r}, so it holds no members; "
                f"it has {list(self.parts)}"
            )
        bounds = np.floor(np.cumsum([0.0, *self.parts.values()]) * members).astype(int)
        i = list(self.parts).index(split)
        return int(bounds[i]), int(bounds[i + 1])

    def size(self, split: str, inputs: SplitInputs) -> int:
        """Inputs of each population in `split`: its part of `target_train`, at most the
        split's own size."""
        lo, hi = self._block(split, len(inputs("target_train").source_index))
        return min(hi - lo, len(inputs(split).source_index))

    def members(self, split: str, inputs: SplitInputs) -> Selection:
        pool = inputs("target_train")
        lo, _ = self._block(split, len(pool.source_index))
        order = np.random.default_rng(self.seed).permutation(len(pool.source_index))
        return pool.subset(np.sort(order[lo : lo + self.size(split, inputs)]))

    def nonmembers(self, split: str, inputs: SplitInputs) -> Selection:
        pool = inputs(split)
        rng = np.random.default_rng([self.seed, AUDIT_SPLITS.index(split)])
        order = rng.permutation(len(pool.source_index))
        return pool.subset(np.sort(order[: self.size(split, inputs)]))


class NonMemberPopulation(Population):
    """The reference population: inputs of the IPG split the target never trained on."""

    paired = False

    def __init__(self, parts: AuditParts) -> None:
        super().__init__("nonmember", key=parts.key)
        self.parts = parts

    def select(self, split: str, inputs: SplitInputs) -> Selection:
        return self.parts.nonmembers(split, inputs)


class MemberPopulation(Contrast):
    """Training members of the target, as they are: every one achieves the population's
    'effect' (being a member), so `success` is all true."""

    paired = False

    def __init__(self, parts: AuditParts) -> None:
        super().__init__("member", key=parts.key)
        self.parts = parts

    def select(self, split: str, inputs: SplitInputs) -> Selection:
        return self.parts.members(split, inputs)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> Contrasted:
        return Contrasted(x, predict(model, x), torch.ones(len(y), dtype=torch.bool))


def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's logits on `x`, batched, in float64 (the scores' logs need it)."""
    return batched_logits(model, x, batch_size).double()


def attack_scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Black-box membership scores (higher = member) from the target's logits: minus the
    cross-entropy loss (Yeom et al. 2018), the true class's probability, minus the prediction's
    entropy. In float64, and the loss as softplus(-logit-scaled confidence): an overfit
    target's members have losses far below float32's resolution near 0 (`log_softmax` rounds
    them all to 0), and ties there would hide the very inputs the attack is about."""
    logits = logits.double()
    log_p = logits.log_softmax(1)
    loss = nn.functional.softplus(-logit_confidence(logits, y))
    return {
        "loss": -loss,
        "confidence": (-loss).exp(),
        "entropy": (log_p.exp() * log_p).sum(1),
    }


def lira_offline(
    target: torch.Tensor, shadow_out: torch.Tensor, global_variance: bool = False
) -> torch.Tensor:
    """LiRA offline (Carlini et al. 2022): how many standard deviations the target's
    logit-scaled confidence `target` (examples) lies above the Gaussian fitted to the OUT
    shadow models' `shadow_out` (shadows, examples), per example. With few shadows the
    per-example spread is noisy: `global_variance` uses one spread for all examples, as the
    paper does below 64 shadows."""
    if len(shadow_out) < 2:
        raise ConfigError("LiRA needs at least 2 shadow models to fit a spread")
    mean = shadow_out.mean(0)
    std = shadow_out.std(0)
    if global_variance:
        std = torch.full_like(std, float(std.pow(2).mean().sqrt()))
    return (target - mean) / std.clamp_min(1e-8)


def generalisation(model: nn.Module, populations: Mapping[str, Images]) -> dict[str, Any]:
    """The target's accuracy and mean loss on each population (members: its training data)
    and the gaps between members and non-members: how much it overfits."""
    rows = {}
    for name, images in populations.items():
        logits = logits_of(model, images.x)
        rows[name] = {
            "n": len(images),
            "accuracy": float((logits.argmax(1) == images.y).double().mean()),
            "loss": float(nn.functional.cross_entropy(logits, images.y)),
        }
    return {
        **rows,
        "accuracy_gap": rows["member"]["accuracy"] - rows["nonmember"]["accuracy"],
        "loss_gap": rows["nonmember"]["loss"] - rows["member"]["loss"],
    }


def moment_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over units (columns; a conv unit's map averaged first) of the squared gaps between
    the rows of `a` and of `b` in mean and standard deviation."""
    a, b = (t.flatten(2).mean(2) if t.ndim > 2 else t for t in (a, b))
    return ((a.mean(0) - b.mean(0)).pow(2) + (a.std(0) - b.std(0)).pow(2)).mean()


class PrivacyLoss:
    """The privacy repair's loss on a batch of the repair set (`Membership.repair_set`):
    `ce_weight` x cross-entropy on its held-out inputs (the task is learnt from inputs the model
    has not memorised), + `distill_weight` x the cross-entropy of the members' predictions
    against `soft_targets` (what reference models never trained on them predict: a member is
    pulled to how a model that did not see it behaves, which is what loss, confidence and LiRA
    attacks compare against), + `activation_weight` x the `moment_gap` of the repaired `units`'
    outputs between members and held-out inputs (what the IPG-GNN and flat attacks read).
    The moment term needs at least 2 of each in a batch, else it is left out."""

    def __init__(
        self,
        units: Mapping[str, Sequence[int]],
        soft_targets: torch.Tensor,
        ce_weight: float = 1.0,
        distill_weight: float = 1.0,
        activation_weight: float = 1.0,
    ) -> None:
        self.units = UnitOutputs(units if activation_weight else {})
        self.soft_targets = soft_targets
        self.ce_weight, self.distill_weight = ce_weight, distill_weight
        self.activation_weight = activation_weight

    def attach(self, model: nn.Module) -> AbstractContextManager:
        return self.units.attach(model)

    def __call__(self, model: nn.Module, batch: Images, step: int) -> torch.Tensor:
        if not {MEMBER, POSITION} <= set(batch.groups):
            raise ConfigError(
                "the privacy loss needs batches of Membership.repair_set (members marked)"
            )
        logits = model(batch.x)
        member = batch.groups[MEMBER].bool()
        loss = self.ce_weight * mean_or_zero(
            nn.functional.cross_entropy(logits[~member], batch.y[~member], reduction="none")
        )
        targets = self.soft_targets[batch.groups[POSITION][member].cpu()].to(logits)
        distill = -(targets * logits[member].log_softmax(1)).sum(1)
        loss = loss + self.distill_weight * mean_or_zero(distill)
        if min(int(member.sum()), int((~member).sum())) >= 2:
            for out in self.units.outputs.values():
                loss = loss + self.activation_weight * moment_gap(out[member], out[~member])
        return loss


def mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values`, 0 (in the graph) when there are none."""
    return values.mean() if len(values) else values.sum()


class Membership(Objective):
    """Members vs non-members of the target's training data (see the module docstring).
    `parts`: the fraction of `target_train` whose inputs are each IPG split's members; `seed`
    fixes the draws; `lira`: the shadow models of the LiRA baseline (`shadows`: how many,
    `split`: the split whose inputs, disjoint from every audited input, they train on);
    `loss`: the privacy repair loss's default settings (`PrivacyLoss`); `references`: how
    many reference models give the members' soft targets (`repair_set`)."""

    reference = "nonmember"
    noun = "population"

    def __init__(
        self,
        parts: Mapping[str, float],
        seed: int,
        lira: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        references: int = 4,
    ) -> None:
        self.parts = AuditParts(parts, seed)
        self.lira = {"shadows": 8, "split": "repair", **(lira or {})}
        if int(self.lira["shadows"]) < 2:
            raise ConfigError(f"objective.lira.shadows must be >= 2; got {self.lira['shadows']}")
        if self.lira["split"] not in AUDIT_SPLITS or self.lira["split"] in (FIT, SELECT, TEST):
            raise ConfigError(
                f"objective.lira.split={self.lira['split']!r} must be a split of "
                f"{list(AUDIT_SPLITS)} other than the audited {[FIT, SELECT, TEST]}: shadow "
                "models train on inputs disjoint from every audited one"
            )
        self.loss = dict(loss or {})
        if references < 1:
            raise ConfigError(f"objective.references must be >= 1; got {references}")
        self.references = references
        self.soft_targets: torch.Tensor | None = None  # of the members, set by repair_set

    def reference_population(self) -> NonMemberPopulation:
        return NonMemberPopulation(self.parts)

    def contrasts(self) -> dict[str, MemberPopulation]:
        return {"member": MemberPopulation(self.parts)}

    def population_report(
        self, reference: Mapping[str, torch.Tensor], contrasts: Mapping[str, Mapping]
    ) -> dict[str, Any]:
        def acc(meta: Mapping[str, torch.Tensor]) -> float:
            return float((meta["pred"] == meta["true_label"]).double().mean())

        members = contrasts["member"]
        report = {
            "n_members": len(members["pred"]),
            "n_nonmembers": len(reference["pred"]),
            "member_acc": acc(members),
            "nonmember_acc": acc(reference),
        }
        return {**report, "accuracy_gap": report["member_acc"] - report["nonmember_acc"]}

    def format_population_report(self, report: Mapping[str, Any]) -> str:
        return (
            f"test split: accuracy on {report['n_members']} members {report['member_acc']:.2%}, "
            f"on {report['n_nonmembers']} non-members {report['nonmember_acc']:.2%} "
            f"(gap {report['accuracy_gap']:+.2%})"
        )

    def population_metrics(self, report: Mapping[str, Any]) -> dict[str, float]:
        return {f"test/{k}": report[k] for k in ("member_acc", "nonmember_acc", "accuracy_gap")}

    def repair_set(
        self, fine_tune: Images, inputs: SplitInputs, fit: FitModel, seed: int, model: nn.Module
    ) -> Images:
        """Every training member of the target (`target_train`: the defender holds its own
        training data) and as many of the repair split's fine-tuning inputs (held out, a
        seeded sample), marked in `groups[MEMBER]`. Trains `references` models like the target
        (`fit`) on other seeded samples of the fine-tuning inputs, so that no member is in
        any, and keeps their mean predicted distribution on each member as its soft target
        (read by `repair_loss`)."""
        members = inputs("target_train").images
        if len(fine_tune) < len(members):
            log.warning(
                "the repair split's fine-tuning part holds %d inputs, fewer than the target's %d "
                "members: the repair set is unbalanced and every reference model sees all of "
                "them (a larger repair split, split.max_size.repair, avoids both)",
                len(fine_tune),
                len(members),
            )
        rng = np.random.default_rng([seed, 1])
        others = fine_tune.subset(np.sort(rng.permutation(len(fine_tune))[: len(members)]))
        probabilities = []
        for i in range(self.references):
            sample = fine_tune.subset(np.sort(rng.permutation(len(fine_tune))[: len(members)]))
            reference = fit(sample, seed + 1000 + i)
            probabilities.append(logits_of(reference, members.x).softmax(1))
        self.soft_targets = torch.stack(probabilities).mean(0).float()

        def marked(images: Images, value: int, start: int) -> Images:
            groups = {
                MEMBER: torch.full((len(images),), value, dtype=torch.long),
                POSITION: torch.arange(start, start + len(images)),
            }
            return Images(images.x, images.y, {**images.groups, **groups})

        return Images.cat([marked(members, 1, 0), marked(others, 0, len(members))])

    def repair_loss(self, units: Mapping[str, Sequence[int]], seed: int, **settings) -> PrivacyLoss:
        if self.soft_targets is None:
            raise ConfigError("a privacy repair's loss needs Membership.repair_set first")
        return PrivacyLoss(units, self.soft_targets, **{**self.loss, **settings})

    def evaluation_names(self) -> list[str]:
        return ["accuracy"]

    def evaluate(
        self,
        model: nn.Module,
        images: Images,
        batch_size: int,
        seed: int,
        only: Sequence[str] | None = None,
        transfer_from: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The model's accuracy on `images`; no contrast inputs are made."""
        return {"n": len(images), "clean_acc": accuracy(model, images, batch_size)}, {}

    def columns(self, result: Mapping[str, Any], validation: bool = False) -> dict[str, str]:
        return {"accuracy": f"{result['clean_acc']:.2%}"}

    def report_note(self, notes: Mapping[str, Any]) -> str:
        return "Accuracy on the split's inputs; membership attacks are in the audit report."
