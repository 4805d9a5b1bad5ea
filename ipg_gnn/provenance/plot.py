"""Pictures of IPGs: one graph, or the difference between an input's benign and adversarial
graphs. Layers are columns (in node order), units are spread along each column; edge width
follows |contribution| and colour its sign (red positive, blue negative). Only the strongest
edges are drawn so the picture stays readable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch_geometric.data import Data  # noqa: E402


def node_positions(layers: Sequence[Mapping]) -> torch.Tensor:
    """(V, 2) drawing positions: x = layer column, y = unit spread over [0, 1]."""
    pos = []
    for column, layer in enumerate(layers):
        n = layer["num_units"]
        ys = (torch.arange(n, dtype=torch.float) + 0.5) / n
        pos.append(torch.stack([torch.full((n,), float(column)), ys], dim=1))
    return torch.cat(pos)


def _figure(
    layers: Sequence[Mapping],
    edge_index: torch.Tensor,
    values: torch.Tensor,
    node_values: torch.Tensor,
    max_edges: int,
    node_label: str,
    title: str,
    path: str | Path | None,
) -> Figure:
    """Draw the strongest `max_edges` edges and every node, then save to `path` if given."""
    fig, ax = plt.subplots(figsize=(2.2 * len(layers) + 2, 6))
    pos = node_positions(layers)
    keep = values.abs().topk(min(max_edges, len(values))).indices
    vals = values[keep]
    scale = float(vals.abs().max()) if len(vals) else 1.0
    segments = torch.stack([pos[edge_index[0, keep]], pos[edge_index[1, keep]]], dim=1)
    colours = [(0.85, 0.1, 0.1, 0.6) if v > 0 else (0.1, 0.25, 0.85, 0.6) for v in vals.tolist()]
    widths = (0.2 + 3.0 * vals.abs() / max(scale, 1e-12)).tolist()
    ax.add_collection(LineCollection(segments.numpy(), colors=colours, linewidths=widths, zorder=1))
    lim = float(node_values.abs().max()) or 1.0
    points = ax.scatter(
        pos[:, 0],
        pos[:, 1],
        c=node_values.numpy(),
        cmap="coolwarm",
        vmin=-lim,
        vmax=lim,
        s=8,
        zorder=2,
        edgecolors="none",
    )
    plt.colorbar(points, ax=ax, label=node_label, fraction=0.03)
    ax.set_xticks(
        range(len(layers)), [layer["name"] for layer in layers], rotation=30, ha="right", fontsize=8
    )
    ax.set_yticks([])
    ax.set_xlabel("edges: red = positive, blue = negative contribution; width = |contribution|")
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def plot_ipg(
    graph: Data,
    layers: Sequence[Mapping],
    path: str | Path | None = None,
    max_edges: int = 400,
    title: str = "",
) -> Figure:
    """Draw one IPG; nodes coloured by their mean pre-activation."""
    values = graph.edge_attr[:, 0]
    title = title or f"IPG: {len(values)} edges, strongest {min(max_edges, len(values))}"
    return _figure(
        layers, graph.edge_index, values, graph.x[:, 0], max_edges, "unit value", title, path
    )


def plot_ipg_difference(
    benign: Data,
    adversarial: Data,
    layers: Sequence[Mapping],
    path: str | Path | None = None,
    max_edges: int = 400,
    title: str = "",
    value_label: str = "value change (adv - benign)",
) -> Figure:
    """Draw adversarial minus benign for one input (or any graph minus another, e.g. two
    populations' mean graphs: `value_label` names the difference): node values and edge
    contributions (edges missing from one graph, as in dynamic mode, count as zero there)."""
    v = benign.num_nodes

    def sparse(g: Data) -> torch.Tensor:
        return torch.sparse_coo_tensor(
            g.edge_index, g.edge_attr[:, 0], (v, v), check_invariants=True
        )

    diff = (sparse(adversarial) - sparse(benign)).coalesce()
    return _figure(
        layers,
        diff.indices(),
        diff.values(),
        adversarial.x[:, 0] - benign.x[:, 0],
        max_edges,
        value_label,
        title or "IPG difference, adversarial - benign",
        path,
    )
