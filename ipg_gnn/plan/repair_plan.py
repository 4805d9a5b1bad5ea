"""Repair plans: per layer, units and edges ranked by attribution, and the targets chosen.

Only weight layers (Linear, Conv) can be repaired: a node target is one unit of such a layer
(its incoming weights and bias: a row of `W`, a conv filter), an edge target one weight between
a source unit and a unit of that layer (`W[i, j]`, or the kernel slice `W[i, j, :, :]`). The plan
is plain JSON and records what produced it, so it can be checked against the model it repairs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from ipg_gnn.errors import UserError
from ipg_gnn.explain import Attribution
from ipg_gnn.graphs import Topology
from ipg_gnn.provenance import LayerKind

log = logging.getLogger(__name__)


class Level(str, Enum):
    """What a repair target is: a unit (its incoming weights and bias) or one weight (edge)."""

    NODE = "node"
    EDGE = "edge"

    @property
    def pool_key(self) -> str:
        """Where a layer's ranking keeps this level's candidates."""
        return "units" if self is Level.NODE else "edges"


class PlanError(UserError, ValueError):
    """A repair plan cannot be made or applied as asked."""


@dataclass
class RepairPlan:
    """Ranked units and edges per repairable layer, and the chosen targets."""

    fingerprint: str
    level: str
    layers: dict[str, dict[str, Any]]  # name -> kind, num_units, units, edges (ranked)
    targets: dict[str, list]  # name -> [unit, ...] or [[source node, unit], ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        # Compact: a dense IPG's first layer alone ranks hundreds of thousands of edges.
        Path(path).write_text(json.dumps(asdict(self), separators=(",", ":")))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RepairPlan:
        return cls(**json.loads(Path(path).read_text()))

    def check_model(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise PlanError(
                f"this plan was made for model {self.fingerprint}, not for "
                f"{fingerprint}; make a new plan for this model"
            )

    def units(self) -> dict[str, list[int]]:
        """The units the plan touches per layer: its node targets, or the units its edges
        feed."""
        if self.level == "node":
            return {layer: list(t) for layer, t in self.targets.items()}
        return {layer: sorted({unit for _, unit in t}) for layer, t in self.targets.items()}

    def retargeted(
        self, targets: Mapping[str, list], level: str | None = None, **provenance: Any
    ) -> RepairPlan:
        """The same ranking with other `targets` (at `level`, default this plan's) and more
        `provenance`; the count of targets taken in index order is recounted for them."""
        level = Level(level or self.level).value
        arbitrary = arbitrary_targets(self.layers, level, targets)
        kept = {k: v for k, v in self.provenance.items() if k != "arbitrary_targets"}
        tied = {"arbitrary_targets": arbitrary} if arbitrary else {}
        return RepairPlan(
            self.fingerprint, level, self.layers, dict(targets), {**kept, **tied, **provenance}
        )

    def redrawn(self, seed: int) -> RepairPlan:
        """A plan of the same layers, level and budget with targets drawn at random from the
        same candidates: the random baseline of this plan."""
        generator = torch.Generator().manual_seed(seed)
        targets = {}
        for layer, chosen in self.targets.items():
            pool = self.layers[layer]["units" if self.level == "node" else "edges"]
            pick = torch.randperm(len(pool), generator=generator)[: len(chosen)].tolist()
            targets[layer] = (
                [pool[i][0] for i in pick]
                if self.level == "node"
                else [[pool[i][0], pool[i][3]] for i in pick]
            )
        return RepairPlan(
            self.fingerprint, self.level, self.layers, targets, {**self.provenance, "random": True}
        )


def rank_layers(attribution: Attribution, topology: Topology) -> dict[str, dict[str, Any]]:
    """Per repairable layer: units ranked by contrasted node importance, and incoming edges
    ranked by contrasted edge importance (source as a global node index and (layer, unit))."""
    table = topology.node_table()
    src, dst = topology.edge_index
    layers = {}
    for layer in topology.layers:
        if not LayerKind(layer["kind"]).is_weight:
            continue
        lo, hi = layer["offset"], layer["offset"] + layer["num_units"]
        node_scores = attribution.node[lo:hi]
        order = torch.argsort(node_scores, descending=True, stable=True)
        incoming = torch.nonzero((dst >= lo) & (dst < hi)).flatten()
        edge_order = incoming[
            torch.argsort(attribution.edge[incoming], descending=True, stable=True)
        ]
        # Plain lists first: a dense IPG gives a first layer hundreds of thousands of edges.
        sources = src[edge_order].tolist()
        layers[layer["name"]] = {
            "kind": layer["kind"],
            "num_units": layer["num_units"],
            "units": [
                [u, score]
                for u, score in zip(order.tolist(), node_scores[order].tolist(), strict=True)
            ],
            "edges": [
                [s, *table[s], d - lo, score]
                for s, d, score in zip(
                    sources,
                    dst[edge_order].tolist(),
                    attribution.edge[edge_order].tolist(),
                    strict=True,
                )
            ],
        }
    return layers


def make_plan(
    attribution: Attribution,
    topology: Topology,
    level: str = "node",
    layers: Sequence[str] | None = None,
    k: int | Mapping[str, int] = 10,
    provenance: Mapping[str, Any] | None = None,
) -> RepairPlan:
    """Choose the `k` top-ranked targets (per layer, or a count for each layer) of each layer in
    `layers` (default: every repairable layer with candidates at this level)."""
    ranked = rank_layers(attribution, topology)
    targets = choose_targets(ranked, level, layers, k)
    arbitrary = arbitrary_targets(ranked, level, targets)
    for name, count in arbitrary.items():
        log.warning(
            "%s's plan for %s: %d of its %d targets tie with the best target left out, so they "
            "were taken in index order, not by attribution (a score constant over the layer, "
            "e.g. zero outside the detector's receptive field)",
            attribution.explainer,
            name,
            count,
            len(targets[name]),
        )
    return RepairPlan(
        topology.fingerprint,
        Level(level).value,
        ranked,
        targets,
        {
            "explainer": attribution.explainer,
            "score": attribution.score,
            **({"stability": attribution.stability} if attribution.stability else {}),
            **({"arbitrary_targets": arbitrary} if arbitrary else {}),
            **(provenance or {}),
        },
    )


def arbitrary_targets(
    ranked: Mapping[str, Mapping[str, Any]], level: str, targets: Mapping[str, Sequence]
) -> dict[str, int]:
    """Per layer, how many chosen targets score the same as the best candidate left out: a
    stable sort took them in index order, so the attribution did not choose them."""
    pool_key = Level(level).pool_key
    counts = {}
    for name, chosen in targets.items():
        pool = ranked[name][pool_key]
        if len(chosen) < len(pool):
            cut = pool[len(chosen)][-1]
            tied = sum(entry[-1] == cut for entry in pool[: len(chosen)])
            if tied:
                counts[name] = tied
    return counts


def choose_targets(
    ranked: Mapping[str, Mapping[str, Any]],
    level: str,
    layers: Sequence[str] | None,
    k: int | Mapping[str, int],
) -> dict[str, list]:
    """The `k` top-ranked targets (per layer, or a count for each layer) of each layer in
    `layers` (default: every ranked layer with candidates at this level) of a ranking
    (`rank_layers`, or a saved plan's `layers`)."""
    if level not in tuple(Level):
        raise PlanError(f"repair level must be one of {[v.value for v in Level]}; got {level!r}")
    pool_key = Level(level).pool_key
    level = Level(level).value
    # By default every layer with candidates at this level: the first weight layer has no
    # captured incoming edges unless the input features are nodes.
    chosen = list(layers) if layers else [name for name in ranked if ranked[name][pool_key]]
    unknown = [name for name in chosen if name not in ranked]
    if unknown:
        raise PlanError(
            f"no repairable layer {', '.join(unknown)}; valid layers: {', '.join(ranked)}"
        )
    targets = {}
    for name in chosen:
        pool = ranked[name][pool_key]
        count = int(k[name] if isinstance(k, Mapping) else k)
        if count < 1 or count > len(pool):
            raise PlanError(
                f"a budget of {count} {level} targets does not fit layer {name}, "
                f"which has {len(pool)} "
                f"{'units' if level == 'node' else 'captured incoming edges'}"
            )
        targets[name] = (
            [u for u, _ in pool[:count]]
            if level == "node"
            else [[e[0], e[3]] for e in pool[:count]]
        )
    return targets
