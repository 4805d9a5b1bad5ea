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
    return "\n".join(lines) + "\n"
