"""Gather the reports of repair sweeps (e.g. the budget sweep
`python repair.py -m experiment=budget_sweep repair.fraction=0.025,0.05,0.1,0.2,0.5`) into one
table.

`python -m ipg_gnn.tools.summary <multirun dir> [<more dirs>] [--out DIR]` prints a markdown
table, one row per job (layer, level, budget), and writes it as `summary.md` and `summary.json`
with `summary.png` (into the first directory, or `--out`): each job's test accuracy under attack
against the share of parameters it changed, one panel per measure (robust accuracy first),
with the targeted repair, the mean of its random plans of the same budget (bars: one standard
deviation over the draws, each draw drawn faintly), full fine-tuning and the unrepaired model.
Several directories let one sweep run as several processes; jobs of the same plan and budget
that split the random draws (`repair.methods.random.first_draw`) become one row with all their
draws (a draw number two jobs share is counted once).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from omegaconf import OmegaConf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from ipg_gnn.repair.report import mean_results  # noqa: E402

FULL = "full_finetune"
#: Config keys that say where a job wrote and what it logged to, not what it repaired.
JOB_ONLY = ("paths", "logger")


def gather(*directories: str | Path) -> list[dict]:
    """One row per job directory under any of `directories` holding a `repair_report.json`,
    ordered by the share of parameters the targeted repair changed."""
    rows = []
    for directory in directories:
        for report_path in sorted(Path(directory).glob("**/repair_report.json")):
            report = json.loads(report_path.read_text())
            cfg = OmegaConf.load(report_path.parent / "repair_config.yaml")
            random = report["baselines"].get("random")
            rows.append(
                {
                    "job": str(report_path.parent),
                    "layer": ", ".join(report["plan"]["targets"]),
                    "level": report["plan"]["level"],
                    "targets": report["plan"]["targets"],
                    "explainer": report["plan"]["explainer"],
                    "before": report["before"],
                    "after": report["after"],
                    "random": random,
                    "random_draws": random.get("draws", [random]) if random else [],
                    FULL: report["baselines"].get(FULL),
                    "k": cfg.repair.k,
                    "fraction": cfg.repair.fraction,
                    "setting": repair_setting(cfg),
                }
            )
    if not rows:
        found = ", ".join(str(Path(d).resolve()) for d in directories)
        raise FileNotFoundError(f"no repair_report.json under {found}")
    return sorted(merge_jobs(rows), key=lambda r: r["after"]["params_changed_fraction"])


def repair_setting(cfg: Any) -> str:
    """What a job repaired and how (its whole config), without what may differ between the jobs
    one budget's draws are split over: output paths, loggers, baselines, each method's draws."""
    setting = OmegaConf.to_container(cfg, resolve=True)
    for key in JOB_ONLY:
        setting.pop(key, None)
    setting["repair"].pop("baselines", None)
    for method in setting["repair"].get("methods", {}).values():
        method.pop("draws", None)
        method.pop("first_draw", None)
    return json.dumps(setting, sort_keys=True)


def merge_jobs(rows: Sequence[dict]) -> list[dict]:
    """One row per repair setting (`repair_setting`): jobs that split one budget's random draws
    over processes each repeat the same targeted repair (the first job's is kept) and add their
    own draws, found by draw number (`draw`; a report without numbers counts from 0)."""
    merged: dict[str, dict] = {}
    for row in rows:
        key = row.pop("setting")
        if key not in merged:
            merged[key] = {**row, "random_draws": dict(_numbered(row["random_draws"]))}
            continue
        into = merged[key]
        into["job"] += f", {row['job']}"
        into[FULL] = into[FULL] or row[FULL]
        for number, draw in _numbered(row["random_draws"]):
            into["random_draws"].setdefault(number, draw)
    for row in merged.values():
        row["random_draws"] = [row["random_draws"][n] for n in sorted(row["random_draws"])]
        if len(row["random_draws"]) > 1:
            row["random"] = {**mean_results(row["random_draws"]), "draws": row["random_draws"]}
    return list(merged.values())


def _numbered(draws: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    return [(draw.get("draw", i), draw) for i, draw in enumerate(draws)]


def measures(result: Mapping[str, Any]) -> list[str]:
    """The accuracies under attack a result holds: robust accuracy (the per-input worst case,
    the headline) first, then each attack."""
    return (["robust"] if "robust_acc" in result else []) + list(result["adv_acc"])


def accuracy(result: Mapping[str, Any], measure: str) -> float:
    return result["robust_acc"] if measure == "robust" else result["adv_acc"][measure]


def spread(draws: Sequence[Mapping[str, Any]], measure: str) -> tuple[float, float]:
    """Mean and standard deviation (0 for one draw) of a measure over random plans."""
    values = [accuracy(d, measure) for d in draws]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def full_finetune(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Full fine-tuning's result (it does not depend on the plan: the first job's that ran it)."""
    return next((r[FULL] for r in rows if r[FULL]), None)


def share_of_full_gain(row: Mapping[str, Any], full: Mapping[str, Any] | None, m: str) -> str:
    """The targeted repair's gain as a share of full fine-tuning's (issue 16's first target)."""
    if full is None or accuracy(full, m) == accuracy(row["before"], m):
        return "-"
    gain = accuracy(row["after"], m) - accuracy(row["before"], m)
    return f"{gain / (accuracy(full, m) - accuracy(row['before'], m)):.0%}"


def table(rows: list[dict]) -> str:
    """The sweep as markdown: per job the clean accuracy and every measure before and after
    repair, the random plans' mean ± standard deviation and the targeted repair's lead over it,
    the share of full fine-tuning's gain, validation columns, and full fine-tuning's own row."""
    names = measures(rows[0]["before"])
    val_attacks = list(rows[0]["after"].get("val", {}).get("adv_acc", {}))
    full = full_finetune(rows)
    head = [
        "layer",
        "level",
        "targets",
        "params changed",
        "clean before",
        "clean after",
        *(f"{m} before" for m in names),
        *(f"{m} after" for m in names),
        *(f"{m} random plans" for m in names),
        *(f"{m} lead over random" for m in names),
        *(f"{m} share of full fine-tuning's gain" for m in names),
        *(f"{a} after (val)" for a in val_attacks),
        *(f"{a} random plans (val)" for a in val_attacks),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        draws = r["random_draws"]
        cells = [
            r["layer"],
            r["level"],
            str(sum(r["targets"].values())),
            f"{r['after']['params_changed']} ({r['after']['params_changed_fraction']:.2%})",
            f"{r['before']['clean_acc']:.2%}",
            f"{r['after']['clean_acc']:.2%}",
            *(f"{accuracy(r['before'], m):.2%}" for m in names),
            *(f"{accuracy(r['after'], m):.2%}" for m in names),
            *(_spread_cell(draws, m) for m in names),
            *(_lead_cell(r, m) for m in names),
            *(share_of_full_gain(r, full, m) for m in names),
            *(_val_cell(r["after"], a) for a in val_attacks),
            *(_val_cell(r["random"], a) for a in val_attacks),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if full is not None:
        changed = f"{full['params_changed']} ({full['params_changed_fraction']:.2%})"
        cells = [
            "full fine-tuning: every layer",
            "-",
            "-",
            changed,
            "-",
            f"{full['clean_acc']:.2%}",
        ]
        cells += ["-"] * len(names) + [f"{accuracy(full, m):.2%}" for m in names]
        lines.append("| " + " | ".join(cells + ["-"] * (len(head) - len(cells))) + " |")
    return "\n".join(lines) + "\n"


def _spread_cell(draws: Sequence[Mapping[str, Any]], measure: str) -> str:
    if not draws:
        return "-"
    mean, sd = spread(draws, measure)
    return f"{mean:.2%} ± {sd:.2%} ({len(draws)})"


def _lead_cell(row: Mapping[str, Any], measure: str) -> str:
    if not row["random_draws"]:
        return "-"
    lead = accuracy(row["after"], measure) - spread(row["random_draws"], measure)[0]
    return f"{lead * 100:+.1f}"


def _val_cell(result: dict | None, attack: str) -> str:
    return f"{result['val']['adv_acc'][attack]:.2%}" if result else "-"


def plot_budget(rows: list[dict], path: str | Path) -> Path:
    """Test accuracy under attack against the share of parameters changed, one panel per
    measure (robust accuracy first): targeted repair per job, the mean of its random plans with
    one standard deviation (each draw faint), full fine-tuning and the unrepaired model."""
    names = measures(rows[0]["before"])
    full = full_finetune(rows)
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.6), squeeze=False)
    for ax, m in zip(axes[0], names, strict=True):
        x = [r["after"]["params_changed_fraction"] for r in rows]
        ax.plot(x, [accuracy(r["after"], m) for r in rows], "o-", label="targeted")
        with_random = [
            (xi, r["random_draws"]) for xi, r in zip(x, rows, strict=True) if r["random_draws"]
        ]
        if with_random:
            mean_sd = [spread(draws, m) for _, draws in with_random]
            ax.errorbar(
                [xi for xi, _ in with_random],
                [mean for mean, _ in mean_sd],
                yerr=[sd for _, sd in mean_sd],
                fmt="x--",
                capsize=3,
                label="random plans (mean ± sd)",
            )
            for xi, draws in with_random:
                ax.scatter(
                    [xi] * len(draws), [accuracy(d, m) for d in draws], c="C1", alpha=0.3, s=10
                )
        if full is not None:
            ax.scatter(
                [full["params_changed_fraction"]],
                [accuracy(full, m)],
                marker="*",
                s=90,
                c="C2",
                label="full fine-tuning",
            )
            ax.axhline(accuracy(full, m), color="C2", lw=0.8, ls=":")
        ax.axhline(accuracy(rows[0]["before"], m), color="grey", lw=0.8, ls="--", label="before")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("share of parameters changed")
        ax.set_title(f"{m} (test)")
    axes[0][0].set_ylabel("accuracy under attack")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m ipg_gnn.tools.summary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directories", nargs="+", help="repair.py multirun directories")
    parser.add_argument("--out", type=Path, help="where to write (default: the first directory)")
    args = parser.parse_args(argv)
    rows = gather(*args.directories)
    out = args.out or Path(args.directories[0])
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    plot_budget(rows, out / "summary.png")
    print(text)
    return text


if __name__ == "__main__":
    main()
