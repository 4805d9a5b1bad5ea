"""Repair methods: what each may change, and how it changes it.

Every method is configured once (`conf/repair/method/<name>.yaml`, with `_target_`) and called
on a :class:`RepairContext` (the original model, the plan, the repair split's parts, the
objective); it returns a repaired copy and a summary. Fine-tuning methods differ only in their
masks: the plan's targets (`PlanFinetune`), a random plan of the same budget
(`RandomPlanFinetune`), a whole layer or every parameter (`LayerFinetune`). `ActivationPatch`
is the prior work's inference-time repair, kept as a baseline. A method's `finetune` and `loss`
override the job's fine-tuning schedule and the objective's loss settings for it alone; `draws`
> 1 repeats it (seeds seed, seed + 1, ...) and reports the mean.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.objectives import Objective
from ipg_gnn.plan import RepairPlan
from ipg_gnn.provenance import CapturePlan
from ipg_gnn.repair.finetune import masked_finetune
from ipg_gnn.repair.masks import Masks, all_masks, count_allowed, layer_masks, plan_masks


@dataclass
class RepairContext:
    """What every method works from."""

    model: nn.Module  # the original, never changed
    plan: RepairPlan
    capture_plan: CapturePlan
    fine_tune: Images  # the repair split's fine-tuning part
    val: Images  # its validation part: clean accuracy checks, settings chosen on it
    objective: Objective
    finetune: Mapping[str, Any]  # the fine-tuning schedule (`repair.finetune`)
    seed: int


class RepairMethod(ABC):
    """A way to repair a model; see the module docstring."""

    def __init__(
        self,
        finetune: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        draws: int = 1,
    ) -> None:
        if draws < 1:
            raise ConfigError(f"a repair method's draws must be >= 1; got {draws}")
        self.finetune, self.loss, self.draws = dict(finetune or {}), dict(loss or {}), draws

    def check(self, name: str, finetune: Sequence[str], loss: Sequence[str]) -> None:
        """Refuse overrides of settings that do not exist (a typo fails before any work)."""
        for kind, given, known in (
            ("finetune", self.finetune, finetune),
            ("loss", self.loss, loss),
        ):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ConfigError(
                    f"repair.methods.{name}.{kind} sets unknown settings {unknown}; "
                    f"known: {', '.join(known)}"
                )

    def schedule(self, ctx: RepairContext) -> dict[str, Any]:
        """The fine-tuning schedule this method runs."""
        return {**ctx.finetune, **self.finetune}

    @abstractmethod
    def __call__(self, ctx: RepairContext, draw: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        """A repaired copy of `ctx.model` and a summary (parameters changed, history...)."""


class MaskedFinetune(RepairMethod):
    """Fine-tuning of the entries `targets` allows, with the objective's repair loss."""

    @abstractmethod
    def targets(
        self, ctx: RepairContext, model: nn.Module, draw: int
    ) -> tuple[Masks, dict[str, list[int]]]:
        """The masks of what may change, and the units repaired (per layer)."""

    def __call__(self, ctx: RepairContext, draw: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        model = copy.deepcopy(ctx.model)
        masks, units = self.targets(ctx, model, draw)
        loss = ctx.objective.repair_loss(units, ctx.seed, **self.loss)
        info = masked_finetune(
            model, masks, ctx.fine_tune, ctx.val, loss, seed=ctx.seed, **self.schedule(ctx)
        )
        info["params_allowed"] = count_allowed(masks)
        return model, info


class PlanFinetune(MaskedFinetune):
    """The plan's targets: targeted repair."""

    def targets(self, ctx, model, draw):
        return plan_masks(model, ctx.plan, ctx.capture_plan), ctx.plan.units()


class RandomPlanFinetune(MaskedFinetune):
    """A random plan of the plan's layers, level and budget (draw `d` seeded `seed + d`)."""

    def targets(self, ctx, model, draw):
        plan = ctx.plan.redrawn(ctx.seed + draw)
        return plan_masks(model, plan, ctx.capture_plan), plan.units()


class LayerFinetune(MaskedFinetune):
    """Every parameter of the last weight layer (`layers="last"`) or of the model (`"all"`)."""

    def __init__(self, layers: str = "all", **kwargs) -> None:
        super().__init__(**kwargs)
        if layers not in ("last", "all"):
            raise ConfigError(f"LayerFinetune layers must be 'last' or 'all'; got {layers!r}")
        self.layers = layers

    def targets(self, ctx, model, draw):
        layers = ctx.capture_plan.weight_layers()
        if self.layers == "last":
            layers, masks = layers[-1:], layer_masks(model, layers[-1:])
        else:
            masks = all_masks(model)
        units = {lay: list(range(model.get_submodule(lay).weight.shape[0])) for lay in layers}
        return masks, units


class PatchedModel(nn.Module):
    """A copy of `model` in which given units of given layers output fixed values (benign
    statistics) at inference. `patches` maps a layer to (units, values)."""

    def __init__(
        self, model: nn.Module, patches: Mapping[str, tuple[Sequence[int], torch.Tensor]]
    ) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for layer, (units, values) in patches.items():
            index = torch.as_tensor(list(units), dtype=torch.long)

            def patch(module, args, out, index=index, values=values):
                out = out.clone()
                out[:, index] = values.to(out.dtype).reshape(len(index), *[1] * (out.ndim - 2))
                return out

            self.model.get_submodule(layer).register_forward_hook(patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@torch.no_grad()
def mean_unit_outputs(
    model: nn.Module, layer: str, units: Sequence[int], images: Images
) -> torch.Tensor:
    """Mean output of the given units of `layer` over `images` (per channel for a conv)."""
    store = []
    hook = model.get_submodule(layer).register_forward_hook(
        lambda module, args, out: store.append(out[:, list(units)].detach())
    )
    try:
        model.eval()(images.x)
    finally:
        hook.remove()
    out = store[0]
    return out.mean(0) if out.ndim == 2 else out.mean(dim=(0, *range(2, out.ndim)))


class ActivationPatch(RepairMethod):
    """The plan's units output their mean over the fine-tuning part at inference (the prior
    work's repair): no parameter changes."""

    def __call__(self, ctx: RepairContext, draw: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        units = ctx.plan.units()
        model = PatchedModel(
            ctx.model,
            {
                lay: (u, mean_unit_outputs(ctx.model, lay, u, ctx.fine_tune))
                for lay, u in units.items()
            },
        )
        info = {
            "params_changed": 0,
            "params_changed_fraction": 0.0,
            "params_allowed": 0,
            "units_patched": sum(map(len, units.values())),
        }
        return model, info
