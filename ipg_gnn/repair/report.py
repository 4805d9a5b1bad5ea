"""A repair report as markdown, and as flat metrics for the loggers (W&B, CSV)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ipg_gnn.objectives import Objective  # noqa: E402

# Per-model entries that are not scores: budgets (eps), sample counts, the fine-tuning trace, a
# random plan's draw number.
_NOT_METRICS = ("eps", "n", "history", "draw")


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


def mean_results(
    results: Sequence[Mapping], skip: Sequence[str] = ("draw",), keep_same: bool = False
) -> dict:
    """The mean of every number the results share, nested keys kept (several random plans'
    runs as one baseline row); traces, other non-numbers, keys in `skip` (draw numbers: labels)
    and keys some results lack are left out. `keep_same`: what is the same in every result is
    kept as it is, numbers or not (e.g. the test split's size, a setting's name)."""
    mean: dict = {}
    for key, value in results[0].items():
        if key in skip or not all(key in r for r in results):
            continue
        if keep_same and all(r[key] == value for r in results):
            mean[key] = value
        elif isinstance(value, Mapping):
            mean[key] = mean_results([r[key] for r in results], skip, keep_same)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            mean[key] = sum(r[key] for r in results) / len(results)
    return mean


def model_result(report: Mapping, name: str) -> Mapping:
    """The result of the model a repair run saved as `name`: `before`, `after`, a baseline, or
    `<baseline>_<d>`, draw number d of a baseline (its first draw for the bare name)."""
    if name in ("before", "after"):
        return report[name]
    baselines = report["baselines"]
    if name in baselines:
        return baselines[name].get("draws", [baselines[name]])[0]
    method, _, draw = name.rpartition("_")
    result = baselines.get(method, {})
    # A draw is found by its number (`first_draw` may start a job's draws after 0).
    found = [
        one
        for i, one in enumerate(result.get("draws", [result] if result else []))
        if draw.isdigit() and one.get("draw", i) == int(draw)
    ]
    if not found:
        raise KeyError(f"no model {name!r} in the repair report (baselines: {list(baselines)})")
    return found[0]


def tied_note(plan: Mapping) -> str:
    """Say which targets the attribution did not rank (tied at the budget's cut), if any."""
    tied = plan.get("arbitrary_targets")
    return f" Tied in attribution, taken in index order: {tied}." if tied else ""


def markdown_report(report: Mapping, objective: Objective) -> str:
    """The repair report as markdown: one row per model, the objective's columns."""
    rows = {
        "original": report["before"],
        "targeted repair": report["after"],
        **{
            f"{name} (mean of {len(r['draws'])} plans)" if "draws" in r else name: r
            for name, r in report["baselines"].items()
        },
    }
    head = [*objective.columns(report["before"]), "params changed", "trainable DOF", "repair time"]
    # A DP-SGD row adds its privacy budget; reports without one keep their columns.
    private = any("privacy" in r for r in rows.values())
    head += ["DP epsilon (delta)"] if private else []
    lines = [
        "# Repair report",
        "",
        f"Test split, n = {report['n_test']}. {objective.report_note(report.get('objective', {}))}",
        "",
        f"Plan: {report['plan']['level']} level, explainer {report['plan']['explainer']}, "
        f"targets {report['plan']['targets']}." + tied_note(report["plan"]),
        "",
        "| model | " + " | ".join(head) + " |",
        "|---" * (1 + len(head)) + "|",
    ]
    for name, r in rows.items():
        changed = (
            f"{r['params_changed']:.0f} ({r['params_changed_fraction']:.2%})"
            if "params_changed" in r
            else "-"
        )
        dof = f"{r['dof']:.0f}" if "dof" in r else "-"
        seconds = f"{r['repair_seconds']:.0f} s" if "repair_seconds" in r else "-"
        cells = [*objective.columns(r).values(), changed, dof, seconds]
        if private:
            dp = r.get("privacy")
            cells.append(f"{dp['epsilon']:.2f} ({dp['delta']:.0e})" if dp else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if private:
        lines += [
            "",
            "DP epsilon (delta): the budget DP-SGD fine-tuning spent on the repair split's "
            "fine-tuning part alone; it says nothing of the data the original model was "
            "trained on (see docs/dp_sgd.md).",
        ]
    lines += _validation_table(rows, objective)
    return "\n".join(lines) + "\n"


def _validation_table(rows: Mapping[str, Mapping], objective: Objective) -> list[str]:
    """The same models on the repair split's validation part: what settings are chosen on."""
    first = next(iter(rows.values()))
    if "val" not in first:
        return []
    head = list(objective.columns(first["val"], validation=True))
    lines = [
        "",
        f"Validation part of the repair split, n = {first['val']['n']}: "
        "choose repair settings on these numbers, never on the test table above.",
        "",
        "| model | " + " | ".join(head) + " |",
        "|---" * (1 + len(head)) + "|",
    ]
    for name, r in rows.items():
        cells = objective.columns(r["val"], validation=True).values()
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
