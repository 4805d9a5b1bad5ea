"""Pictures of a repair plan: per-layer importance bars and the strongest edges."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ipg_gnn.plan.repair_plan import RepairPlan  # noqa: E402


def plot_plan(plan: RepairPlan, path: str | Path, top: int = 30) -> Path:
    """Top row: per planned layer, the `top` units by contrasted importance (chosen targets
    highlighted). Bottom row: heatmap of the layer's strongest incoming edges (source unit x
    unit), coloured by contrasted importance."""
    layers = list(plan.targets)
    score = plan.provenance["score"]
    fig, axes = plt.subplots(2, len(layers), figsize=(5 * len(layers), 7), squeeze=False)
    for col, layer in enumerate(layers):
        info = plan.layers[layer]
        units = info["units"][:top]
        chosen = (
            set(plan.targets[layer])
            if plan.level == "node"
            else {unit for _, unit in plan.targets[layer]}
        )
        ax = axes[0, col]
        ax.bar(
            range(len(units)),
            [s for _, s in units],
            color=["tab:red" if u in chosen else "tab:grey" for u, _ in units],
        )
        ax.set_xticks(range(len(units)), [str(u) for u, _ in units], rotation=90, fontsize=6)
        ax.set(
            title=f"{layer}: units by importance (red: planned)",
            ylabel=score,
        )
        edges = info["edges"][: top * 3]
        ax = axes[1, col]
        if not edges:
            ax.set_axis_off()
            continue
        sources = sorted({(e[1], e[2]) for e in edges})
        targets = sorted({e[3] for e in edges})
        grid = np.full((len(targets), len(sources)), np.nan)
        for _, src_layer, src_unit, unit, value in edges:
            grid[targets.index(unit), sources.index((src_layer, src_unit))] = value
        lim = np.nanmax(np.abs(grid)) or 1.0
        image = ax.imshow(grid, cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(
            range(len(sources)), [f"{s[0]}:{s[1]}" for s in sources], rotation=90, fontsize=5
        )
        ax.set_yticks(range(len(targets)), [str(t) for t in targets], fontsize=6)
        ax.set(title=f"strongest edges into {layer}", xlabel="source unit", ylabel="unit")
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.suptitle(f"Repair plan ({plan.level} level, {plan.provenance.get('explainer')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
