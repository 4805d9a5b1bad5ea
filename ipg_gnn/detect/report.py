"""Pictures and tables of a detection report: ROC curves, the transfer heatmap, markdown."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_roc  # noqa: E402


def plot_roc_curves(
    scores: Mapping[str, torch.Tensor],
    meta: Mapping[str, torch.Tensor],
    populations: list[str],
    contrasts: list[str],
    path: str | Path,
) -> Path:
    """One panel per contrast population (its graphs vs all reference ones), one curve per
    detector in `scores`."""
    fig, axes = plt.subplots(1, len(contrasts), figsize=(4 * len(contrasts), 4), squeeze=False)
    contrast = meta["is_contrast"].bool()
    for ax, name in zip(axes[0], contrasts, strict=True):
        mask = ~contrast | (meta["population_id"] == populations.index(name))
        for detector, s in scores.items():
            fpr, tpr, _ = binary_roc(s[mask], contrast[mask].long())
            ax.plot(fpr.numpy(), tpr.numpy(), label=detector)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
        ax.set(title=name, xlabel="false positive rate", ylabel="true positive rate")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("ROC on the test split's IPGs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_transfer(matrix: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Heatmap of AUROC: rows = population trained on, columns = population tested on."""
    rows = list(matrix)
    cols = list(next(iter(matrix.values())))
    values = np.array([[matrix[r][c] for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2, 1.0 * len(rows) + 1.5))
    image = ax.imshow(values, vmin=0.5, vmax=1.0, cmap="viridis")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(
                j,
                i,
                f"{values[i, j]:.3f}",
                ha="center",
                va="center",
                color="white" if values[i, j] < 0.8 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel="tested on", ylabel="trained on", title="Detector transfer (test AUROC)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_adaptive_eps(adaptive: Mapping, path: str | Path) -> Path:
    """The adaptive study's success rate (misclassified and not flagged) against eps, one line
    per detector, and the classifier-only attacker's (misclassified) as the reference."""
    eps = adaptive["eps"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    only = [adaptive["classifier_only"][str(e)] for e in eps]
    ax.plot(eps, only, color="black", ls="--", marker="o", label="classifier only")
    for name, result in adaptive["detectors"].items():
        ax.plot(eps, [result["by_eps"][str(e)]["success"] for e in eps], marker="o", label=name)
    ax.axvline(adaptive["dataset_eps"], color="grey", lw=0.5)
    ax.set(
        xlabel="eps (L-inf)",
        ylabel="attack success rate",
        ylim=(-0.02, 1.02),
        title=f"Adaptive attack: misclassified and not flagged at {adaptive['fpr']:.0%} FPR",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def adaptive_markdown(adaptive: Mapping) -> list[str]:
    """Markdown lines of the adaptive study: per detector at the dataset's eps, then the
    success rate over the eps sweep."""
    e0 = str(adaptive["dataset_eps"])
    lines = [
        "",
        f"## Adaptive attacker (eps {e0})",
        "",
        f"{adaptive['n_inputs']} test inputs the model gets right (of the first "
        f"{adaptive['n_attempted']}); attack {adaptive['attack']}. Threshold at "
        f"{adaptive['fpr']:.0%} FPR on ipg_val's benign IPGs. Success: misclassified and not "
        "flagged; classifier only: misclassified by the same PGD without the detector term "
        "(in brackets: and not flagged).",
        "",
        "| detector | AUROC | TPR at threshold | test benign FPR | adaptive success "
        "| classifier-only success |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in adaptive["detectors"].items():
        m = r["by_eps"][e0]
        lines.append(
            f"| {name} | {m['auroc']:.4f} | {m['tpr_at_threshold']:.4f} | "
            f"{r['test_benign_fpr']:.4f} | {m['success']:.4f} | "
            f"{m['classifier_only_success']:.4f} ({m['classifier_only_unflagged']:.4f}) |"
        )
    eps = [str(e) for e in adaptive["eps"]]
    lines += [
        "",
        "Success rate over eps",
        "",
        "| eps | classifier only | " + " | ".join(adaptive["detectors"]) + " |",
        "|---|---|" + "---|" * len(adaptive["detectors"]),
    ]
    for e in eps:
        cells = [f"{r['by_eps'][e]['success']:.4f}" for r in adaptive["detectors"].values()]
        lines.append(f"| {e} | {adaptive['classifier_only'][e]:.4f} | " + " | ".join(cells) + " |")
    return lines


def _cell(result: Mapping | None, key: str) -> str:
    return "n/a" if result is None else f"{result[key]:.4f}"


def markdown_report(report: Mapping, noun: str) -> str:
    """A short markdown summary of `detector_report.json`, whose contrast populations are
    called `noun`s (per-population results under `per_<noun>`)."""
    per = f"per_{noun}"
    names = list(report[per])
    lines = [
        "# Detector report",
        "",
        f"Detector `{report['detector']['gnn']}`; graphs per split: {report['n_graphs']}.",
        f"Test split only; AUROC per {noun} (reference graphs vs that {noun}'s "
        f"graphs), in brackets on successful {noun}s only.",
        "",
        "| detector | all | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    rows = {"GNN": report, **report["baselines"]}
    for name, r in rows.items():
        all_ = r["test"] if name == "GNN" else r
        cells = [
            f"{_cell(r[per][a], 'auroc')} "
            f"({_cell((r[per][a] or {}).get('successful_only'), 'auroc')})"
            for a in names
        ]
        lines.append(f"| {name} | {_cell(all_, 'auroc')} | " + " | ".join(cells) + " |")
    t = report["test"]
    lines += [
        "",
        f"GNN on all test graphs: accuracy {t['accuracy']:.4f}, TPR at 5% FPR "
        f"{t['tpr_at_5fpr']:.4f}, n = {t['n']} ({t['n_contrast']} of contrast populations).",
    ]
    if report.get("transfer"):
        cols = list(next(iter(report["transfer"].values())))
        lines += [
            "",
            "Transfer (test AUROC; rows: trained on, columns: tested on)",
            "",
            "| trained on | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for row, values in report["transfer"].items():
            lines.append(f"| {row} | " + " | ".join(f"{values[c]:.4f}" for c in cols) + " |")
    if report.get("adaptive"):
        lines += adaptive_markdown(report["adaptive"])
    return "\n".join(lines) + "\n"
