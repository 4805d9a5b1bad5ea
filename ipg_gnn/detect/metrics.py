"""Detection metrics (torchmetrics), overall, per contrast population, and on the graphs whose
contrast succeeded only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_roc


def tpr_at_fpr(scores: torch.Tensor, labels: torch.Tensor, fpr: float = 0.05) -> float:
    """The highest true-positive rate whose false-positive rate stays at or below `fpr`."""
    fprs, tprs, _ = binary_roc(scores, labels.long())
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def threshold_at_fpr(benign: torch.Tensor, fpr: float = 0.05) -> float:
    """The score above which at most a fraction `fpr` of the `benign` scores lie: a detection
    threshold fixed on benign data alone (the validation split's, so test numbers stay clean)."""
    return float(torch.quantile(benign.double(), 1 - fpr, interpolation="higher"))


def detection_metrics(
    scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5
) -> dict[str, float | int] | None:
    """AUROC, accuracy at `threshold`, TPR at 5% FPR and counts; None without both classes."""
    labels = labels.long()
    n_contrast = int(labels.sum())
    if n_contrast == 0 or n_contrast == len(labels):
        return None
    return {
        "auroc": float(binary_auroc(scores, labels)),
        "accuracy": float(binary_accuracy(scores, labels, threshold=threshold)),
        "tpr_at_5fpr": tpr_at_fpr(scores, labels),
        "n": len(labels),
        "n_contrast": n_contrast,
    }


def evaluate_scores(
    scores: torch.Tensor, meta: Mapping[str, torch.Tensor], populations: Sequence[str]
) -> dict:
    """Metrics of detector `scores` on graphs described by `meta` (`is_contrast`, `success`,
    `population_id` as in `IPGDataset.meta`): overall and per contrast population, each on all
    its graphs and on those whose contrast succeeded (reference graphs always included)."""
    contrast, success = meta["is_contrast"].bool(), meta["success"].bool()
    population = meta["population_id"]
    reference = ~contrast

    def block(mask: torch.Tensor) -> dict | None:
        result = detection_metrics(scores[mask], contrast[mask])
        if result is not None:
            kept = mask & (reference | success)
            result["successful_only"] = detection_metrics(scores[kept], contrast[kept])
        return result

    report = {"all": block(torch.ones_like(contrast)), "per_population": {}}
    for i, name in enumerate(populations):
        if contrast[population == i].any():
            report["per_population"][name] = block(reference | (population == i))
    return report


#: False-positive rates the membership-inference field reports TPR at (Carlini et al. 2022).
LOW_FPRS = (0.001, 0.01)


def fit_threshold(scores: torch.Tensor, is_member: torch.Tensor) -> float:
    """The score threshold of highest balanced accuracy (Youden's J = TPR - FPR) on the
    inputs it is fitted on (the audit's train or validation part, never its test part)."""
    fpr, tpr, thresholds = roc_curve(is_member.numpy(), scores.numpy())
    return float(thresholds[int(np.argmax(tpr - fpr))])


def orientation(scores: torch.Tensor, is_member: torch.Tensor) -> int:
    """+1, or -1 when `scores` rank members *below* non-members on the inputs they are fitted
    on (AUC < 0.5): an attacker who sees the validation part reads a score either way, so a
    repair that overshoots (members now less confident) is not counted as private."""
    return 1 if roc_auc_score(is_member.numpy(), scores.numpy()) >= 0.5 else -1


def attack_metrics(
    scores: torch.Tensor, is_member: torch.Tensor, threshold: float
) -> dict[str, float | int]:
    """AUC, balanced accuracy at `threshold` (a member when score >= threshold), TPR at each
    of `LOW_FPRS`, and the counts behind them (a TPR at 0.1% FPR rests on the largest
    non-member scores: it needs >= 1000 non-members to mean anything)."""
    labels = is_member.long()
    return {
        "auc": float(roc_auc_score(labels.numpy(), scores.numpy())),
        "balanced_accuracy": float(
            balanced_accuracy_score(labels.numpy(), (scores >= threshold).long().numpy())
        ),
        **{f"tpr_at_{f:g}fpr": tpr_at_fpr(scores, labels, f) for f in LOW_FPRS},
        "threshold": threshold,
        "n_members": int(labels.sum()),
        "n_nonmembers": int((labels == 0).sum()),
    }
