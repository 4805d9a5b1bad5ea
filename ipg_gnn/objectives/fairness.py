"""Group fairness: the IPGs of one group of a sensitive attribute contrasted with the other's.

The populations are the groups (`Images.groups[attribute]`, 1 = privileged): disjoint subsets
of a split's inputs, as they are, so a group's graph pairs with no reference graph (`paired`
False; the flow difference compares the groups' mean flows per true label instead). The GNN
trained to tell the groups' IPGs apart measures how much group information the flow carries
(its AUROC), even with the attribute kept out of the input.

Metrics are fairlearn's (`MetricFrame` per group: accuracy, selection rate, TPR, FPR; the
demographic-parity and equalized-odds differences), with bootstrap confidence intervals where
`bootstrap` > 0 (small test splits such as German credit's). The repair loss is cross-entropy
plus `weight` x a differentiable gap between the groups' mean predicted probability of the
positive class: overall (demographic parity) or within each true label (equalized odds: the
TPR and FPR gaps, summed, which bounds fairlearn's worst case of the two). An optional anchor
(`anchor_weight`) holds each true label's overall mean P(positive) at the original model's, so
the gap closes by moving the groups towards each other rather than both down.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.objectives.base import Contrast, Contrasted, Objective, Selection, SplitInputs
from ipg_gnn.targets import predict

#: Group values of `Images.groups` and the population each is.
GROUPS = {"privileged": 1, "unprivileged": 0}


class Penalty(str, Enum):
    """Which gap the repair loss penalises."""

    EQUALIZED_ODDS = "equalized_odds"
    EQUALIZED_ODDS_MAX = "equalized_odds_max"
    DEMOGRAPHIC_PARITY = "demographic_parity"


class GroupPopulation(Contrast):
    """The inputs of a split whose `attribute` equals `group`, as they are. `success` marks the
    inputs the model gets wrong (a group's 'effect' is an error)."""

    paired = False

    def __init__(self, name: str, attribute: str, group: int) -> None:
        super().__init__(name, key=f"{attribute}{group}")
        self.attribute, self.group = attribute, group

    def select(self, split: str, inputs: SplitInputs) -> Selection:
        selection = inputs(split)
        groups = selection.images.groups
        if self.attribute not in groups:
            raise ConfigError(
                f"objective.attribute={self.attribute!r} is not a sensitive attribute of this "
                f"dataset (it has {', '.join(groups) or 'none'})"
            )
        return selection.subset(np.flatnonzero(groups[self.attribute].numpy() == self.group))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> Contrasted:
        pred = predict(model, x)
        return Contrasted(x, pred, pred != y)


def signed_gaps(
    score: torch.Tensor, y: torch.Tensor, group: torch.Tensor, strata: Sequence[int | None]
) -> dict[int | None, torch.Tensor]:
    """Privileged minus unprivileged mean `score` in each stratum (a true label; None: every
    row) where the batch holds both groups."""
    gaps = {}
    for label in strata:
        cell = torch.ones_like(y, dtype=torch.bool) if label is None else y == label
        a, b = cell & (group == 1), cell & (group == 0)
        if a.any() and b.any():
            gaps[label] = score[a].mean() - score[b].mean()
    return gaps


def penalty_strata(penalty: str) -> list[int | None]:
    """The strata a penalty compares the groups in: every row, or each true label."""
    return [None] if Penalty(penalty) is Penalty.DEMOGRAPHIC_PARITY else [0, 1]


def fairness_gap(
    score: torch.Tensor, y: torch.Tensor, group: torch.Tensor, penalty: str
) -> torch.Tensor:
    """The gap between the groups' mean `score` (probability of the positive class): overall
    (demographic parity), or per true label, summed (equalized odds) or the larger of the two
    (equalized_odds_max: the smooth counterpart of fairlearn's equalized-odds difference, which
    is the larger of the TPR and FPR gaps, so only the binding gap is pushed). Cells a batch
    lacks are left out; 0 when no cell has both groups."""
    gaps = [score.sum() * 0.0]
    gaps += [g.abs() for g in signed_gaps(score, y, group, penalty_strata(penalty)).values()]
    gaps = torch.stack(gaps)
    return gaps.max() if Penalty(penalty) is Penalty.EQUALIZED_ODDS_MAX else gaps.sum()


class GapMultipliers:
    """Signed weights of each stratum's smooth gap that follow the thresholded gaps.

    The smooth gaps' minimum is not the thresholded rates' (Adult runs 8, 9: the summed smooth
    TPR and FPR gaps close the thresholded FPR gap only by reversing the thresholded TPR gap).
    A multiplier per stratum starts at sign(smooth gap), so the first step is the summed
    penalty's, and then takes `lr` x the batch's thresholded gap at every later step, clipped to
    [-1, 1]: a gap that stays open on one side pushes harder that way, a reversed one pulls back
    (the Lagrange multipliers' ascent of a proxy-Lagrangian, Cotter et al. 2019, with the
    multipliers bounded by the penalty weight). `reset` forgets them (a new fine-tuning run)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.reset()

    def reset(self) -> None:
        self.values: dict[int | None, float] = {}
        self.step: int | None = None

    def __call__(
        self,
        smooth: Mapping[int | None, torch.Tensor],
        hard: Mapping[int | None, torch.Tensor],
        step: int,
    ) -> dict[int | None, float]:
        """The multipliers this step's penalty uses; from the second step seen on, each new
        step then moves them by the batch's thresholded gaps (calls at the first step or a step
        seen before leave them: an explainer's batches all see the summed penalty's signs, a
        look-ahead's evaluations do not move them)."""
        for label, gap in smooth.items():
            self.values.setdefault(label, float(torch.sign(gap.detach())))
        used = dict(self.values)
        if self.step is None:
            self.step = step
        elif step > self.step:
            self.step = step
            for label, gap in hard.items():
                self.values[label] = min(1.0, max(-1.0, self.values[label] + self.lr * float(gap)))
        return used


def anchor_gap(score: torch.Tensor, reference: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared difference between the mean of `score` and of `reference` (the original model's
    scores on the same rows) within each true label, summed over the labels the batch holds:
    how far the overall smooth TPR (label 1) and FPR (label 0) have moved."""
    anchor = score.sum() * 0.0
    for label in (0, 1):
        cell = y == label
        if cell.any():
            anchor = anchor + (score[cell].mean() - reference[cell].mean()) ** 2
    return anchor


class FairnessLoss:
    """`ce_weight` x cross-entropy + `weight` x `fairness_gap` of the batch's groups
    + `anchor_weight` x `anchor_gap` against the model as fine-tuning starts.

    The gap alone is as low when both groups' rates fall to the lower one ("levelling down")
    as when they meet in between. The anchor keeps each true label's overall mean P(positive),
    the smooth overall TPR and FPR, where the original model had it on the same inputs, so the
    gap can only close by raising one group's rate as the other's falls (weighted by group size:
    the larger group moves less). It compares with the original on the batch itself (a frozen
    copy taken in `attach`) rather than with a target rate fixed once, so it carries no batch
    sampling noise; squared, so it is smooth and vanishes at the start. With a method that
    prunes first, the reference is the pruned model. `anchor_weight=0`: no anchor, no copy.

    `temperature` sharpens the score the gap and the anchor see, softmax(logits / temperature)
    of the positive class (1: the predicted probability): below 1 a group's mean score comes
    closer to its thresholded rate, which fairlearn's metrics count.

    `multiplier_lr` > 0 weights each stratum's signed smooth gap by `weight` x a
    `GapMultipliers` value that follows the thresholded gaps (predicted class 1 at the argmax,
    as fairlearn counts it), in place of `weight` x |gap| (equalized_odds, demographic_parity;
    not equalized_odds_max, whose max already picks the binding gap). The multipliers start
    afresh at each outermost `attach` (a fine-tuning run, a look-ahead)."""

    def __init__(
        self,
        attribute: str,
        penalty: str = "equalized_odds",
        weight: float = 1.0,
        ce_weight: float = 1.0,
        anchor_weight: float = 0.0,
        temperature: float = 1.0,
        multiplier_lr: float = 0.0,
    ) -> None:
        if penalty not in tuple(p.value for p in Penalty):
            raise ConfigError(
                f"objective.loss.penalty must be one of {[p.value for p in Penalty]}; "
                f"got {penalty!r}"
            )
        if anchor_weight < 0 or temperature <= 0 or multiplier_lr < 0:
            raise ConfigError(
                "objective.loss.anchor_weight and multiplier_lr must be >= 0 and temperature "
                f"> 0; got {anchor_weight}, {multiplier_lr}, {temperature}"
            )
        if multiplier_lr and Penalty(penalty) is Penalty.EQUALIZED_ODDS_MAX:
            raise ConfigError(
                "objective.loss.multiplier_lr weights each gap by its own multiplier; use "
                "penalty=equalized_odds with it, not equalized_odds_max"
            )
        self.temperature = temperature
        self.attribute, self.penalty = attribute, penalty
        self.weight, self.ce_weight, self.anchor_weight = weight, ce_weight, anchor_weight
        self.multipliers = GapMultipliers(multiplier_lr) if multiplier_lr else None
        self.reference: nn.Module | None = None
        self.attached = 0

    @contextlib.contextmanager
    def attach(self, model: nn.Module):
        """For a fine-tuning run: fresh multipliers, and a frozen copy of `model` (its scores
        are the anchor's reference; none without an anchor). Nested, the outer model stays the
        reference and the multipliers go on (a look-ahead attaches the original around its
        adapted copy's steps)."""
        outermost = not self.attached
        if outermost:
            if self.multipliers is not None:
                self.multipliers.reset()
            if self.anchor_weight:
                self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.attached += 1
        try:
            yield
        finally:
            self.attached -= 1
            if outermost:
                self.reference = None

    def penalty_term(
        self, score: torch.Tensor, logits: torch.Tensor, batch: Images, step: int
    ) -> torch.Tensor:
        """`weight` x the groups' gap: |gap| combined as `penalty` says, or each signed gap
        times its multiplier."""
        group = batch.groups[self.attribute]
        if self.multipliers is None:
            return self.weight * fairness_gap(score, batch.y, group, self.penalty)
        strata = penalty_strata(self.penalty)
        smooth = signed_gaps(score, batch.y, group, strata)
        hard = signed_gaps((logits.argmax(-1) == 1).float(), batch.y, group, strata)
        used = self.multipliers(smooth, hard, step)
        return self.weight * sum((used[k] * gap for k, gap in smooth.items()), score.sum() * 0.0)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The score the gap and the anchor see: softmax(logits / temperature) of the positive
        class."""
        return (logits / self.temperature).softmax(-1)[:, 1]

    def gap_and_rates(self, model: nn.Module, batch: Images) -> torch.Tensor:
        """[the groups' gap as `penalty` combines it (unweighted), each true label's overall mean
        score (the smooth FPR and TPR)]: what a repair should move, then what it should hold so
        that the gap does not close by levelling every rate down (a selective plan's inputs).
        The gap is |gap| as `penalty` combines it, also where `multiplier_lr` weights the
        repair's own penalty otherwise."""
        if not ((batch.y == 0).any() and (batch.y == 1).any()):
            raise ValueError(
                f"a batch of {len(batch)} rows holds one true label only: gap_and_rates holds "
                "each label's overall rate; raise explainer.batch_size until every batch holds both"
            )
        score = self.score(model(batch.x))
        gap = fairness_gap(score, batch.y, batch.groups[self.attribute], self.penalty)
        return torch.stack([gap, score[batch.y == 0].mean(), score[batch.y == 1].mean()])

    def __call__(self, model: nn.Module, batch: Images, step: int) -> torch.Tensor:
        logits = model(batch.x)
        score = self.score(logits)
        loss = self.ce_weight * nn.functional.cross_entropy(logits, batch.y)
        loss = loss + self.penalty_term(score, logits, batch, step)
        if self.anchor_weight:
            if self.reference is None:
                raise RuntimeError("an anchored FairnessLoss is called inside `attach(model)`")
            with torch.no_grad():
                reference = self.score(self.reference(batch.x))
            loss = loss + self.anchor_weight * anchor_gap(score, reference, batch.y)
        return loss


def fairness_metrics(y_true: np.ndarray, y_pred: np.ndarray, group: np.ndarray) -> dict[str, Any]:
    """fairlearn's per-group rates and between-group differences of binary predictions."""
    frame = MetricFrame(
        metrics={
            "accuracy": accuracy_score,
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=group,
    )
    rows = frame.by_group.to_dict("index")
    return {
        "n": len(y_true),
        "clean_acc": float(frame.overall["accuracy"]),
        "eo_diff": float(equalized_odds_difference(y_true, y_pred, sensitive_features=group)),
        "dp_diff": float(demographic_parity_difference(y_true, y_pred, sensitive_features=group)),
        "by_group": {
            name: {k: float(v) for k, v in rows[value].items()}
            for name, value in GROUPS.items()
            if value in rows
        },
    }


def resampled_gaps(
    y_true: np.ndarray, y_pred: np.ndarray, group: np.ndarray, index: np.ndarray
) -> dict[str, np.ndarray]:
    """Accuracy, equalized-odds and demographic-parity difference (fairlearn's definitions:
    the larger of the groups' TPR and FPR gaps; the selection-rate gap) of every resample, a
    row of `index`, at once; NaN where a resample lacks a group or a label within a group.
    fairlearn's own functions cost about 0.1 s a call, minutes per evaluation over 1,000
    resamples; a test checks these equal them."""
    t, p, g = y_true[index], y_pred[index], group[index]

    def rate(events: np.ndarray, within: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (events & within).sum(1) / within.sum(1)

    gaps = {}
    for name, cell in (("tpr", t == 1), ("fpr", t == 0), ("selection", np.ones_like(t, bool))):
        gaps[name] = np.abs(rate(p == 1, cell & (g == 1)) - rate(p == 1, cell & (g == 0)))
    return {
        "clean_acc": (t == p).mean(1),
        "eo_diff": np.maximum(gaps["tpr"], gaps["fpr"]),
        "dp_diff": gaps["selection"],
    }


def bootstrap_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    group: np.ndarray,
    n: int,
    confidence: float,
    seed: int,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (`n` resamples of the inputs) of accuracy, EO and DP
    difference, all three over the same resamples: those lacking a group's positives or
    negatives (no EO difference) are left out of every interval."""
    index = np.random.default_rng(seed).integers(0, len(y_true), (n, len(y_true)))
    tail = (1 - confidence) / 2 * 100
    gaps = resampled_gaps(y_true, y_pred, group, index)
    kept = ~np.isnan(gaps["eo_diff"])
    return {
        k: [float(np.nanpercentile(v[kept], tail)), float(np.nanpercentile(v[kept], 100 - tail))]
        for k, v in gaps.items()
    }


class Fairness(Objective):
    """Privileged vs unprivileged group of the sensitive `attribute` (an `Images.groups` key,
    e.g. `sex`). `loss`: the repair loss's default settings (see :class:`FairnessLoss`);
    `bootstrap`: resamples for confidence intervals of the test numbers (0: none), at
    `confidence`."""

    reference = "privileged"
    noun = "group"

    def __init__(
        self,
        attribute: str,
        loss: Mapping[str, Any] | None = None,
        bootstrap: int = 0,
        confidence: float = 0.95,
    ) -> None:
        if bootstrap < 0 or not 0 < confidence < 1:
            raise ConfigError(
                f"objective.bootstrap must be >= 0 and confidence in (0, 1); got {bootstrap}, "
                f"{confidence}"
            )
        self.attribute = attribute
        self.loss = dict(loss or {})
        self.bootstrap, self.confidence = bootstrap, confidence
        FairnessLoss(attribute, **self.loss)  # a bad setting fails before any work

    def reference_population(self) -> GroupPopulation:
        return GroupPopulation(self.reference, self.attribute, GROUPS[self.reference])

    def contrasts(self) -> dict[str, GroupPopulation]:
        return {"unprivileged": GroupPopulation("unprivileged", self.attribute, 0)}

    def population_report(
        self, reference: Mapping[str, torch.Tensor], contrasts: Mapping[str, Mapping]
    ) -> dict[str, Any]:
        other = contrasts["unprivileged"]
        y_true = torch.cat([reference["true_label"], other["true_label"]]).numpy()
        y_pred = torch.cat([reference["pred"], other["pred"]]).numpy()
        group = np.r_[np.ones(len(reference["pred"])), np.zeros(len(other["pred"]))]
        return {"attribute": self.attribute, **fairness_metrics(y_true, y_pred, group)}

    def format_population_report(self, report: Mapping[str, Any]) -> str:
        lines = [
            f"{report['attribute']:14s} {'n':>6s} {'accuracy':>9s} {'selected':>9s} "
            f"{'TPR':>7s} {'FPR':>7s}   (test split)"
        ]
        for name, r in report["by_group"].items():
            lines.append(
                f"{name:14s} {'':>6s} {r['accuracy']:9.2%} {r['selection_rate']:9.2%} "
                f"{r['tpr']:7.2%} {r['fpr']:7.2%}"
            )
        lines.append(
            f"{'all':14s} {report['n']:6d} {report['clean_acc']:9.2%}   equalized-odds diff "
            f"{report['eo_diff']:.3f}, demographic-parity diff {report['dp_diff']:.3f}"
        )
        return "\n".join(lines)

    def population_metrics(self, report: Mapping[str, Any]) -> dict[str, float]:
        return {
            "test/clean_acc": report["clean_acc"],
            "test/eo_diff": report["eo_diff"],
            "test/dp_diff": report["dp_diff"],
        }

    def repair_loss(
        self, units: Mapping[str, Sequence[int]], seed: int, **settings
    ) -> FairnessLoss:
        return FairnessLoss(self.attribute, **{**self.loss, **settings})

    def evaluation_names(self) -> list[str]:
        return ["fairness"]

    def evaluate(
        self,
        model: nn.Module,
        images: Images,
        batch_size: int,
        seed: int,
        only: Sequence[str] | None = None,
        transfer_from: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """fairlearn's metrics of `model`'s predictions on `images`, and (unless `only` asks
        for a validation subset) bootstrap intervals. No contrast inputs are made."""
        if self.attribute not in images.groups:
            raise ConfigError(
                f"objective.attribute={self.attribute!r}: the inputs have no such group"
            )
        y_true, group = images.y.numpy(), images.groups[self.attribute].numpy()
        y_pred = predict(model, images.x, batch_size).numpy()
        report = fairness_metrics(y_true, y_pred, group)
        if self.bootstrap and only is None:
            report["ci"] = bootstrap_intervals(
                y_true, y_pred, group, self.bootstrap, self.confidence, seed
            )
        return report, {}

    def columns(self, result: Mapping[str, Any], validation: bool = False) -> dict[str, str]:
        ci = result.get("ci", {})

        def cell(key: str, fmt: str) -> str:
            value = format(result[key], fmt)
            if key in ci:
                value += " [" + ", ".join(format(v, fmt) for v in ci[key]) + "]"
            return value

        groups = result["by_group"]
        rates = {
            f"{rate} (priv / unpriv)": " / ".join(
                f"{groups[g][key]:.1%}" if g in groups else "-" for g in GROUPS
            )
            for rate, key in (("TPR", "tpr"), ("FPR", "fpr"), ("selected", "selection_rate"))
        }
        return {
            "accuracy": cell("clean_acc", ".2%"),
            "EO diff": cell("eo_diff", ".3f"),
            "DP diff": cell("dp_diff", ".3f"),
            **rates,
        }

    def report_note(self, notes: Mapping[str, Any]) -> str:
        interval = (
            f" Brackets: {self.confidence:.0%} bootstrap intervals ({self.bootstrap} resamples)."
            if self.bootstrap
            else ""
        )
        return (
            f"Groups of {self.attribute} (fairlearn): EO diff is the equalized-odds difference "
            "(the larger of the TPR and FPR gaps), DP diff the demographic-parity difference "
            f"(selection-rate gap); 0 is fair.{interval}"
        )
