"""The markdown summary of a repair report."""

from __future__ import annotations

from collections.abc import Mapping


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
    rows = {"original": report["before"], "targeted repair": report["after"], **report["baselines"]}
    for name, r in rows.items():
        transfer = r.get("transfer_acc", {})
        cells = [f"{r['adv_acc'][a]:.2%}" for a in attacks]
        cells += [f"{transfer[a]:.2%}" if a in transfer else "-" for a in attacks]
        changed = (
            f"{r['params_changed']} ({r['params_changed_fraction']:.2%})"
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
