"""A repair report as markdown, and as flat metrics for the loggers (W&B, CSV)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Per-model entries that are not scores: attack budgets, sample counts, the fine-tuning trace.
_NOT_METRICS = ("eps", "n", "history")


def flat_metrics(report: Mapping, prefix: str = "") -> dict[str, float]:
    """Every number of the report's `before`, `after` and `baselines` parts under a path key
    (`after/adv_acc/pgd`, `baselines/random/val/clean_acc`), for one W&B panel per number."""
    flat: dict[str, float] = {}
    for key, value in report.items():
        if key in _NOT_METRICS:
            continue
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def mean_results(results: Sequence[Mapping]) -> dict:
    """The mean of every number the results share, nested keys kept (several random plans'
    runs as one baseline row); traces and other non-numbers are left out."""
    mean: dict = {}
    for key, value in results[0].items():
        if isinstance(value, Mapping):
            mean[key] = mean_results([r[key] for r in results])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            mean[key] = sum(r[key] for r in results) / len(results)
    return mean


def markdown_report(report: Mapping) -> str:
    attacks = list(report["before"]["adv_acc"])
    head = (
        "| model | clean | "
        + " | ".join(f"{a} (adaptive)" for a in attacks)
        + " | "
        + " | ".join(f"{a} (transfer)" for a in attacks)
        + " | params changed | repair time |"
    )
    lines = [
        "# Repair report",
        "",
        f"Test split, n = {report['n_test']}. Adaptive: attacks re-crafted against each "
        "model. Transfer: the original model's adversarial examples.",
        "",
        f"Plan: {report['plan']['level']} level, explainer {report['plan']['explainer']}, "
        f"targets {report['plan']['targets']}.",
        "",
        head,
        "|---" * (3 + 2 * len(attacks)) + "|---|",
    ]
    rows = {
        "original": report["before"],
        "targeted repair": report["after"],
        **{
            f"{name} (mean of {len(r['draws'])} plans)" if "draws" in r else name: r
            for name, r in report["baselines"].items()
        },
    }
    for name, r in rows.items():
        transfer = r.get("transfer_acc", {})
        cells = [f"{r['adv_acc'][a]:.2%}" for a in attacks]
        cells += [f"{transfer[a]:.2%}" if a in transfer else "-" for a in attacks]
        changed = (
            f"{r['params_changed']:.0f} ({r['params_changed_fraction']:.2%})"
            if "params_changed" in r
            else "-"
        )
        seconds = f"{r['repair_seconds']:.0f} s" if "repair_seconds" in r else "-"
        lines.append(
            f"| {name} | {r['clean_acc']:.2%} | "
            + " | ".join(cells)
            + f" | {changed} | {seconds} |"
        )
    lines += _validation_table(rows)
    return "\n".join(lines) + "\n"


def _validation_table(rows: Mapping[str, Mapping]) -> list[str]:
    """The same models on the repair split's validation part: what settings are chosen on."""
    first = next(iter(rows.values()))
    if "val" not in first:
        return []
    attacks = list(first["val"]["adv_acc"])
    lines = [
        "",
        f"Validation part of the repair split, n = {first['val']['n']} (adaptive attacks): "
        "choose repair settings on these numbers, never on the test table above.",
        "",
        "| model | clean | " + " | ".join(attacks) + " |",
        "|---" * (2 + len(attacks)) + "|",
    ]
    for name, r in rows.items():
        cells = [f"{r['val']['adv_acc'][a]:.2%}" for a in attacks]
        lines.append(f"| {name} | {r['val']['clean_acc']:.2%} | " + " | ".join(cells) + " |")
    return lines


def plot_finetune_curves(
    histories: Mapping[str, list[Mapping]],
    start: float,
    tolerances: Mapping[str, float],
    path: str | Path,
) -> Path:
    """Validation clean accuracy along each fine-tuning run (`start`: the original model's),
    with each method's tolerance line: shows the early dip of adversarial fine-tuning and which
    checkpoint each method kept."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        ax.plot([h["step"] for h in history], [h["val_clean_acc"] for h in history], label=name)
    ax.axhline(start, color="grey", lw=0.8, label="before repair")
    distinct = sorted(set(tolerances.values()))
    for tolerance in distinct:
        names = [n for n, t in tolerances.items() if t == tolerance]
        label = "tolerance" if len(distinct) == 1 else f"tolerance ({', '.join(names)})"
        ax.axhline(start - tolerance, color="grey", ls="--", lw=0.8, label=label)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("clean accuracy (validation part)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
