"""The adaptive detector study (`train.py detector.adaptive=true`): every trained detector
against an attacker who knows it.

For each detector (the GNN and every baseline, each through its own logit), adaptive examples
are crafted on the test split's benign inputs that the model gets right, at every eps of the
sweep (`detector.adaptive_study.eps_scale` times the dataset's eps). The detection threshold is
fixed at `fpr` on the **validation** split's benign IPGs (the test split gives numbers only).
Per detector and eps: AUROC and TPR at the threshold (the inputs' benign IPGs vs their adaptive
IPGs) and the attack's success rate, "misclassified and not flagged", next to the success of the
classifier-only attacker (the same PGD without the detector term) at the same eps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from ipg_gnn.attacks.adaptive import AdaptivePGD
from ipg_gnn.data import ImageDataset, Splits
from ipg_gnn.detect.differentiable import GraphLogit, InputLogit, stored_logits
from ipg_gnn.detect.metrics import threshold_at_fpr
from ipg_gnn.detect.report import plot_adaptive_eps
from ipg_gnn.graphs import Topology
from ipg_gnn.jobs.stages import ipg_dataset
from ipg_gnn.provenance import IPGCapture
from ipg_gnn.targets import predict

log = logging.getLogger(__name__)


def load_capture(model: nn.Module, ipgs: Mapping[str, Any], example: torch.Tensor) -> IPGCapture:
    """The capturer that built the run's IPGs: the stored topology's config and static edges."""
    topology = Topology.load(Path(ipgs["root"]))
    capture = IPGCapture(model, example[:1], topology.config)
    if topology.static_pairs is not None:
        capture.use_static_pairs(topology.static_pairs)
    return capture


def input_logits(detector: InputLogit, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The detector's logits of inputs `x`, in batches, without autograd."""
    with torch.no_grad():
        return torch.cat(
            [detector(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
        )


def evasion_metrics(
    benign: torch.Tensor, adversarial: torch.Tensor, success: torch.Tensor, threshold: float
) -> dict[str, float]:
    """AUROC (benign vs adversarial logits), TPR at `threshold`, and the share of inputs whose
    adversarial version both fools the classifier (`success`) and is not flagged."""
    labels = torch.cat([torch.zeros(len(benign)), torch.ones(len(adversarial))]).long()
    flagged = adversarial > threshold
    return {
        "auroc": float(binary_auroc(torch.cat([benign, adversarial]), labels)),
        "tpr_at_threshold": float(flagged.float().mean()),
        "success": float((success & ~flagged).float().mean()),
    }


def run_adaptive_study(
    cfg: DictConfig,
    model: nn.Module,
    data: ImageDataset,
    splits: Splits,
    ipgs: Mapping[str, Any],
    detectors: Mapping[str, GraphLogit],
    out: Path,
) -> tuple[dict[str, Any], Path]:
    """Attack every detector of `detectors` adaptively over the eps sweep; returns the report
    section (`adaptive` in `detector_report.json`) and the plot `adaptive_eps.png`."""
    study = cfg.detector.adaptive_study
    attack: AdaptivePGD = instantiate(study.adaptive_pgd, seed=cfg.seed)
    test = splits.images(data, "test")
    x, y = test.x[: study.max_inputs], test.y[: study.max_inputs]
    right = predict(model, x) == y
    if not right.any():
        raise ValueError(
            f"the model gets none of the first {len(y)} test inputs right: no input "
            "to attack (raise detector.adaptive_study.max_inputs)"
        )
    x, y = x[right], y[right]
    capture = load_capture(model, ipgs, x)
    val = ipg_dataset(ipgs, "ipg_val", []).meta
    eps_sweep = sorted({round(cfg.dataset.eps * s, 6) for s in study.eps_scale})
    report: dict[str, Any] = {
        "n_inputs": len(x),
        "n_attempted": int(len(right)),
        "fpr": study.fpr,
        "attack": repr(attack),
        "dataset_eps": cfg.dataset.eps,
        "eps": eps_sweep,
        "classifier_only": {},
        "detectors": {},
    }
    temperature = study.indicator_temperature
    scorers = {name: InputLogit(capture, d, temperature) for name, d in detectors.items()}
    benign, thresholds = {}, {}
    for name, d in detectors.items():
        val_logits = stored_logits(d, val["x"], val["contribution"])
        thresholds[name] = threshold_at_fpr(val_logits, study.fpr)
        benign[name] = input_logits(scorers[name], x, attack.batch_size)
        report["detectors"][name] = {
            "threshold": thresholds[name],
            "val_fpr": float((val_logits > thresholds[name]).float().mean()),
            "test_benign_fpr": float((benign[name] > thresholds[name]).float().mean()),
            "by_eps": {},
        }
    for eps in eps_sweep:
        at_eps = attack.with_eps(eps)
        plain = at_eps(model, x, y)
        report["classifier_only"][str(eps)] = float(plain.success.float().mean())
        for name, scorer in scorers.items():
            log.info("adaptive attack on %s at eps %s", name, eps)
            adaptive = at_eps(model, x, y, detector=scorer)
            result = evasion_metrics(
                benign[name],
                input_logits(scorer, adaptive.x_adv, attack.batch_size),
                adaptive.success,
                thresholds[name],
            )
            seen = input_logits(scorer, plain.x_adv, attack.batch_size)
            result["classifier_only_success"] = report["classifier_only"][str(eps)]
            result["classifier_only_unflagged"] = evasion_metrics(
                benign[name], seen, plain.success, thresholds[name]
            )["success"]
            report["detectors"][name]["by_eps"][str(eps)] = result
    return report, plot_adaptive_eps(report, out / "adaptive_eps.png")
