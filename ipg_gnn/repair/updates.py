"""How the planned entries of a weight change during a repair.

`Update` (the base) trains every planned entry on its own (one degree of freedom each: plain masked
fine-tuning). `LowRank` trains a rank-`rank` product `B A` added to the planned entries of each
planned layer's weight, and `ScaleBias` one scale per planned unit (its planned entries scaled
together); both keep the planned biases (and a folded BatchNorm's planned scales and shifts)
trainable as they are. Each re-parametrises the planned layers of a model copy with
`torch.nn.utils.parametrize` and returns masks over the parameters that are trained (their
`count_allowed` is the repair's trainable degrees of freedom), so `masked_finetune` runs them like
any other masks; `bake` folds the result back into plain weights, so the repaired model has the
original architecture and its changed weights are counted entry by entry against the original. The
delta is always multiplied by the weight's plan mask, so nothing outside the plan ever changes.
`NormBias` trains the planned biases and BatchNorm entries alone (no re-parametrisation): a unit's
kernel or weight row stays as it is, so the weights changed are the degrees of freedom.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.nn.utils import parametrize

from ipg_gnn.errors import ConfigError
from ipg_gnn.repair.masks import Masks


class Update:
    """Every planned entry is its own degree of freedom (plain masked fine-tuning); the base
    of the other updates."""

    def apply(self, model: nn.Module, masks: Masks, seed: int) -> Masks:
        """Re-parametrise `model` in place; the masks of what is trained from now on."""
        return masks

    def bake(self, model: nn.Module) -> None:
        """Fold any re-parametrisation back into plain weights (in place)."""
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


class _Delta(nn.Module, ABC):
    """A parametrisation `W -> W + mask * delta(W)`; `mask` is the weight's plan mask.
    `row_params`: the parameters indexed by the weight's rows (units), trained only on the
    planned units' rows."""

    row_params: tuple[str, ...]

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    @abstractmethod
    def delta(self, weight: torch.Tensor) -> torch.Tensor: ...

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.mask * self.delta(weight)


class _LowRankDelta(_Delta):
    """`delta = B A` over the weight's rows (a conv filter flattened): B starts at zero, so the
    model starts unchanged, and A at random unit-norm rows, so B gets a gradient from the
    first step (LoRA's initialisation)."""

    row_params = ("B",)

    def __init__(self, mask: torch.Tensor, rank: int, generator: torch.Generator) -> None:
        super().__init__(mask)
        rows, cols = mask.shape[0], mask[0].numel()
        a = torch.randn(rank, cols, generator=generator)
        self.A = nn.Parameter(a / a.norm(dim=1, keepdim=True))
        self.B = nn.Parameter(torch.zeros(rows, rank))

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return (self.B @ self.A).reshape(weight.shape)


class _ScaleDelta(_Delta):
    """`delta = s * W` per row: each planned unit's planned entries scaled by `1 + s`."""

    row_params = ("s",)

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask)
        self.s = nn.Parameter(torch.zeros(mask.shape[0]))

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return self.s.reshape(-1, *[1] * (weight.ndim - 1)) * weight


def _planned_weights(model: nn.Module, masks: Masks) -> dict[str, torch.Tensor]:
    """Module name -> plan mask of its weight, for the weight matrices and kernels with planned
    entries (a BatchNorm's per-channel weight is a scale, trained as it is)."""
    return {
        name.removesuffix(".weight"): m
        for name, m in masks.items()
        if name.endswith(".weight") and m.ndim > 1 and m.any()
    }


def _reparametrised(model: nn.Module, masks: Masks, deltas: dict[str, _Delta]) -> Masks:
    """Register each module's delta on its weight; the masks of what is trained then: the
    deltas' parameters where they act (rows of planned units), the planned biases."""
    trained = {name: m for name, m in masks.items() if name.removesuffix(".weight") not in deltas}
    for layer, delta in deltas.items():
        module = model.get_submodule(layer)
        delta.to(module.weight.device)
        parametrize.register_parametrization(module, "weight", delta)
        rows = delta.mask.flatten(1).any(1)
        for name, p in delta.named_parameters():
            key = f"{layer}.parametrizations.weight.0.{name}"
            planned = rows.reshape(-1, *[1] * (p.ndim - 1)) if name in delta.row_params else True
            trained[key] = torch.zeros_like(p, dtype=torch.bool) | planned
    return trained


class LowRank(Update):
    """The planned entries of each planned weight change by a rank-`rank` product `B A`
    (rows of B outside the planned units stay zero): `rank * (planned units + inputs per unit)`
    degrees of freedom per layer, plus the planned biases."""

    def __init__(self, rank: int = 4) -> None:
        if rank < 1:
            raise ConfigError(f"LowRank rank must be >= 1; got {rank}")
        self.rank = rank

    def apply(self, model, masks, seed):
        generator = torch.Generator().manual_seed(seed)
        deltas = {
            layer: _LowRankDelta(m, self.rank, generator)
            for layer, m in _planned_weights(model, masks).items()
        }
        return _reparametrised(model, masks, deltas)


class ScaleBias(Update):
    """Each planned unit's planned entries are scaled together and its bias shifted: two
    degrees of freedom per planned unit of a layer with a bias."""

    def apply(self, model, masks, seed):
        deltas = {layer: _ScaleDelta(m) for layer, m in _planned_weights(model, masks).items()}
        return _reparametrised(model, masks, deltas)


class NormBias(Update):
    """Only the planned one-dimensional entries change: a unit's bias and its folded BatchNorm's
    scale and shift (two per channel of a conv-BN layer, one bias per unit of a plain layer).
    Frankle et al. (ICLR 2021) train deep nets through the BatchNorm affine parameters alone;
    here they are the cheapest per-unit knobs a repair can turn."""

    def apply(self, model, masks, seed):
        kept = {name: m for name, m in masks.items() if m.ndim == 1}
        if not any(m.any() for m in kept.values()):
            raise ConfigError("NormBias: the plan frees no bias or BatchNorm entry to train")
        return kept
