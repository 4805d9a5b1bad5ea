"""Gather the reports of a repair sweep (e.g. the single-layer study
`python repair.py -m repair.layer=net.1,net.3,net.5`) into one table.

`python -m ipg_gnn.tools.summary <multirun dir>` prints a markdown table, one row per job
(layer, level, budget), and writes it next to the jobs as `summary.md` and `summary.json`, with
`summary.png`: each job's test adversarial accuracy against the share of parameters it changed,
targeted and random plan side by side, which shows what a budget sweep buys
(`python repair.py -m repair.layer=net.1 repair.fraction=0.05,0.1,0.2`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
from omegaconf import OmegaConf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402


def gather(directory: str | Path) -> list[dict]:
    """One row per job directory under `directory` holding a `repair_report.json`."""
    rows = []
    for report_path in sorted(Path(directory).glob("**/repair_report.json")):
        report = json.loads(report_path.read_text())
        cfg = OmegaConf.load(report_path.parent / "repair_config.yaml")
        rows.append(
            {
                "job": str(report_path.parent.relative_to(directory)),
                "layer": ", ".join(report["plan"]["targets"]),
                "level": report["plan"]["level"],
                "targets": report["plan"]["targets"],
                "explainer": report["plan"]["explainer"],
                "before": report["before"],
                "after": report["after"],
                "random": report["baselines"].get("random"),
                "k": cfg.repair.k,
                "fraction": cfg.repair.fraction,
            }
        )
    if not rows:
        raise FileNotFoundError(f"no repair_report.json under {Path(directory).resolve()}")
    return rows


def _val_cell(result: dict | None, attack: str) -> str:
    return f"{result['val']['adv_acc'][attack]:.2%}" if result else "-"


def table(rows: list[dict]) -> str:
    attacks = list(rows[0]["before"]["adv_acc"])
    val_attacks = list(rows[0]["after"].get("val", {}).get("adv_acc", {}))
    head = [
        "layer",
        "level",
        "targets",
        "clean before",
        "clean after",
        *(f"{a} before" for a in attacks),
        *(f"{a} after" for a in attacks),
        *(f"{a} random plan" for a in attacks),
        *(f"{a} after (val)" for a in val_attacks),
        *(f"{a} random plan (val)" for a in val_attacks),
        "params changed",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        random = r["random"]["adv_acc"] if r["random"] else {}
        cells = [
            r["layer"],
            r["level"],
            str(sum(r["targets"].values())),
            f"{r['before']['clean_acc']:.2%}",
            f"{r['after']['clean_acc']:.2%}",
            *(f"{r['before']['adv_acc'][a]:.2%}" for a in attacks),
            *(f"{r['after']['adv_acc'][a]:.2%}" for a in attacks),
            *(f"{random[a]:.2%}" if a in random else "-" for a in attacks),
            *(_val_cell(r["after"], a) for a in val_attacks),
            *(_val_cell(r["random"], a) for a in val_attacks),
            f"{r['after']['params_changed']} ({r['after']['params_changed_fraction']:.2%})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_budget(rows: list[dict], path: str | Path) -> Path:
    """Test adversarial accuracy against parameters changed, one panel per attack: targeted
    repair (labelled `layer: targets`), its random plan of the same budget and the unrepaired
    model, per job."""
    attacks = list(rows[0]["before"]["adv_acc"])
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.6 * len(attacks), 3.4), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        x = [r["after"]["params_changed_fraction"] for r in rows]
        ax.scatter(x, [r["after"]["adv_acc"][attack] for r in rows], label="targeted", marker="o")
        randoms = [(xi, r["random"]) for xi, r in zip(x, rows, strict=True) if r["random"]]
        ax.scatter(
            [xi for xi, _ in randoms],
            [r["adv_acc"][attack] for _, r in randoms],
            label="random plan",
            marker="x",
        )
        ax.scatter(x, [r["before"]["adv_acc"][attack] for r in rows], label="before", marker=".")
        for xi, r in zip(x, rows, strict=True):
            label = f"{r['layer']}: {sum(r['targets'].values())}"
            ax.annotate(label, (xi, r["after"]["adv_acc"][attack]), fontsize=7)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("share of parameters changed")
        ax.set_title(f"{attack} (test)")
    axes[0][0].set_ylabel("adversarial accuracy")
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
    parser.add_argument("directory", help="a repair.py multirun directory")
    args = parser.parse_args(argv)
    rows = gather(args.directory)
    text = table(rows)
    (Path(args.directory) / "summary.md").write_text(text)
    (Path(args.directory) / "summary.json").write_text(json.dumps(rows, indent=2))
    plot_budget(rows, Path(args.directory) / "summary.png")
    print(text)
    return text


if __name__ == "__main__":
    main()
