"""Detection metrics (torchmetrics), overall, per attack, and on successful attacks only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_roc


def tpr_at_fpr(scores: torch.Tensor, labels: torch.Tensor, fpr: float = 0.05) -> float:
    """The highest true-positive rate whose false-positive rate stays at or below `fpr`."""
    fprs, tprs, _ = binary_roc(scores, labels.long())
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def detection_metrics(
    scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5
) -> dict[str, float | int] | None:
    """AUROC, accuracy at `threshold`, TPR at 5% FPR and counts; None without both classes."""
    labels = labels.long()
    n_adv = int(labels.sum())
    if n_adv == 0 or n_adv == len(labels):
        return None
    return {
        "auroc": float(binary_auroc(scores, labels)),
        "accuracy": float(binary_accuracy(scores, labels, threshold=threshold)),
        "tpr_at_5fpr": tpr_at_fpr(scores, labels),
        "n": len(labels),
        "n_adv": n_adv,
    }


def evaluate_scores(
    scores: torch.Tensor, meta: Mapping[str, torch.Tensor], attacks: Sequence[str]
) -> dict:
    """Metrics of detector `scores` on graphs described by `meta` (`is_adv`, `success`,
    `attack_id` as in `IPGDataset.meta`): overall and per attack, each on all adversarial
    graphs and on those whose attack succeeded (benign graphs always included)."""
    adv, success, attack_id = meta["is_adv"].bool(), meta["success"].bool(), meta["attack_id"]
    benign = ~adv

    def block(mask: torch.Tensor) -> dict | None:
        result = detection_metrics(scores[mask], adv[mask])
        if result is not None:
            result["successful_only"] = detection_metrics(
                scores[mask & (benign | success)], adv[mask & (benign | success)]
            )
        return result

    report = {"all": block(torch.ones_like(adv)), "per_attack": {}}
    for i, name in enumerate(attacks):
        if name != "none":
            report["per_attack"][name] = block(benign | (attack_id == i))
    return report
