"""How a repair budget is spread over the planned layers.

By default every planned layer gives the same share of its own parameters (`repair.fraction`),
so a CNN's budget lands mostly in its widest layers. On the Fashion-MNIST CNN of
docs/budget_sweep.md that share leaves every partial plan at 0% robust accuracy, while the same
number of parameters in the first two convolutions is most of full fine-tuning's gain: where the
budget goes matters more there than which units of a layer take it. `LookaheadAllocation`
spends the budget of the plan made as usual greedily instead: in rounds, each layer offers its
next best-ranked targets worth a slice of the budget, every offer is scored by the look-ahead
(`ipg_gnn.repair.lookahead`: the fall of the repair loss on the repair split's validation part
after a few masked steps), and the offer with the largest gain per parameter is taken, until no
offer fits what is left. Within a layer the plan's ranking still picks the targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.objectives import RepairLoss
from ipg_gnn.repair.lookahead import lookahead_gain
from ipg_gnn.repair.masks import Masks

#: Look-ahead gain of a plan given as targets per layer.
GainOf = Callable[[dict[str, int]], float]


@dataclass
class LookaheadAllocation:
    """Greedy per-layer budgets by look-ahead (module docstring). `chunks`: the budget is
    offered in slices of 1/`chunks` of it (a layer whose targets left cost less offers them
    all); `steps`, `lr`, `batch_size`: the look-ahead's masked fine-tuning."""

    chunks: int = 4
    steps: int = 20
    lr: float = 1e-3
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.chunks < 1 or self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                "an allocation needs chunks, steps and batch_size >= 1 and lr > 0; got "
                f"{self.chunks}, {self.steps}, {self.batch_size}, {self.lr}"
            )

    def allocate(
        self,
        pools: Mapping[str, int],
        costs: Mapping[str, int],
        budget: int,
        gain_of: GainOf,
    ) -> tuple[dict[str, int], list[dict]]:
        """Targets per layer (`pools`: candidates per layer; `costs`: parameters per target)
        within `budget` parameters, and the rounds that chose them (every offer's gain)."""
        counts = dict.fromkeys(pools, 0)
        spent, gain, rounds = 0, 0.0, []
        while offers := self._offers(pools, costs, counts, budget, budget - spent):
            gains = {
                layer: gain_of({**counts, layer: counts[layer] + n}) for layer, n in offers.items()
            }
            best = max(
                offers, key=lambda layer: (gains[layer] - gain) / (offers[layer] * costs[layer])
            )
            counts[best] += offers[best]
            spent += offers[best] * costs[best]
            gain = gains[best]
            rounds.append({"offers": offers, "gains": gains, "taken": best, "params": spent})
        return {layer: n for layer, n in counts.items() if n}, rounds

    def _offers(
        self,
        pools: Mapping[str, int],
        costs: Mapping[str, int],
        counts: dict[str, int],
        budget: int,
        left: int,
    ) -> dict[str, int]:
        """Per layer, how many of its next targets it offers: a slice of the budget's worth
        (at least one target), no more than it has left, and where the slice would overspend
        as many as what is left pays for, so the budget is spent while any target fits."""
        slice_ = budget / self.chunks
        offers = {}
        for layer, pool in pools.items():
            n = min(pool - counts[layer], max(1, int(slice_ // costs[layer])), left // costs[layer])
            if n > 0:
                offers[layer] = n
        return offers

    def gain(
        self,
        model: nn.Module,
        masks: Masks,
        train: Images,
        val: Images,
        loss_fn: RepairLoss,
        seed: int,
    ) -> float:
        """The look-ahead gain of adapting what `masks` allow."""
        return lookahead_gain(
            model, masks, train, val, loss_fn, self.steps, self.lr, self.batch_size, seed
        )["gain"]
