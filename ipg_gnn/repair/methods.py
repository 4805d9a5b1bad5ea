"""Repair methods: what each may change, and how it changes it.

Every method is configured once (`conf/repair/method/<name>.yaml`, with `_target_`) and called
on a :class:`RepairContext` (the original model, the plan, the repair split's parts, the
objective); it returns a repaired copy and a summary. Fine-tuning methods differ only in their
masks: the plan's targets (`PlanFinetune`), a random plan of the same budget
(`RandomPlanFinetune`), a whole layer or every parameter (`LayerFinetune`), every parameter but
the pruned inputs of a layer (`FinePruning`); with `prune`, what the masks free starts from zero.
`ActivationPatch` is the prior work's inference-time repair, kept as a baseline. A method's
`finetune` and `loss` override the job's fine-tuning schedule and the objective's loss settings
for it alone; `draws` > 1 repeats it (seeds seed, seed + 1, ...) and reports the mean.
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
from ipg_gnn.repair.finetune import changed_params, masked_finetune
from ipg_gnn.repair.masks import (
    Masks,
    all_masks,
    count_allowed,
    layer_masks,
    plan_masks,
    pruned_entries,
    unit_outputs,
)
from ipg_gnn.repair.updates import Update
from ipg_gnn.targets import accuracy


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
        first_draw: int = 0,
    ) -> None:
        if draws < 1 or first_draw < 0:
            raise ConfigError(
                f"a repair method's draws must be >= 1 and first_draw >= 0; got {draws}, "
                f"{first_draw}"
            )
        self.finetune, self.loss = dict(finetune or {}), dict(loss or {})
        self.draws, self.first_draw = draws, first_draw

    def draw_tags(self, name: str) -> dict[int, str]:
        """Each draw's number and its tag in reports: the method's name for a single draw 0,
        `<name>_<d>` otherwise (draws `first_draw`...: parallel jobs split one method's draws
        without repeating one)."""
        numbers = range(self.first_draw, self.first_draw + self.draws)
        if list(numbers) == [0]:
            return {0: name}
        return {d: f"{name}_{d}" for d in numbers}

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

    def check_model(self, name: str, model: nn.Module) -> None:
        """Refuse a model this method cannot repair (`name`: its config key), before any work;
        every model by default."""
        return None

    def schedule(self, ctx: RepairContext) -> dict[str, Any]:
        """The fine-tuning schedule this method runs."""
        return {**ctx.finetune, **self.finetune}

    @abstractmethod
    def __call__(self, ctx: RepairContext, draw: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        """A repaired copy of `ctx.model` and a summary (parameters changed, history...)."""


class MaskedFinetune(RepairMethod):
    """Fine-tuning of the entries `targets` allows, with the objective's repair loss. `prune`:
    those entries are zeroed first (a unit with a folded BatchNorm is silenced by its scale and
    shift alone: `pruned_entries`), so what they carried is removed and only what the repair
    loss's data needs grows back (a fault no repair input exercises gets no gradient, so
    fine-tuning alone leaves it where it is). `update`: how the allowed entries change (default
    each on its own; `LowRank`, `ScaleBias`: fewer trainable degrees of freedom, reported as
    `dof` beside the weights changed)."""

    def __init__(self, prune: bool = False, update: Update | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prune, self.update = prune, update or Update()

    @abstractmethod
    def targets(
        self, ctx: RepairContext, model: nn.Module, draw: int
    ) -> tuple[Masks, dict[str, list[int]]]:
        """The masks of what may change, and the units repaired (per layer)."""

    def __call__(self, ctx: RepairContext, draw: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        model = copy.deepcopy(ctx.model)
        masks, units = self.targets(ctx, model, draw)
        if self.prune:
            zeroed = pruned_entries(masks, ctx.capture_plan)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in zeroed:
                        p.masked_fill_(zeroed[name], 0.0)
        loss = ctx.objective.repair_loss(
            unit_outputs(ctx.capture_plan, units), ctx.seed, **self.loss
        )
        trained = self.update.apply(model, masks, ctx.seed + draw)
        info = masked_finetune(
            model,
            trained,
            ctx.fine_tune,
            ctx.val,
            loss,
            seed=ctx.seed,
            baseline_acc=accuracy(ctx.model, ctx.val),
            **self.schedule(ctx),
        )
        self.update.bake(model)
        if not info["within_tolerance"]:
            # Pruned, and clean accuracy never came back within tolerance: no repair.
            model = copy.deepcopy(ctx.model)
        # Counted against the original: entries pruned before fine-tuning changed too.
        info |= changed_params(model, dict(ctx.model.named_parameters()))
        info["params_allowed"], info["dof"] = count_allowed(masks), count_allowed(trained)
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
            layers = layers[-1:]
            norm = ctx.capture_plan.op(layers[0]).norm
            masks = layer_masks(model, layers + ([norm] if norm else []))
        else:
            masks = all_masks(model)
        units = {lay: list(range(model.get_submodule(lay).weight.shape[0])) for lay in layers}
        return masks, units


@torch.no_grad()
def mean_inputs(model: nn.Module, layer: str, images: Images) -> torch.Tensor:
    """Mean input of `layer` over `images`, per input unit (per channel for a conv): how active
    each unit feeding the layer is."""
    store = []
    hook = model.get_submodule(layer).register_forward_pre_hook(
        lambda module, args: store.append(args[0].detach())
    )
    try:
        model.eval()(images.x.to(next(model.parameters()).device))
    finally:
        hook.remove()
    x = store[0]
    return x.mean(dim=(0, *range(2, x.ndim)))


class FinePruning(MaskedFinetune):
    """Fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018): the inputs of `layer` (default: the
    last weight layer, whose inputs are the last hidden layer's units, or the last conv's channels
    after pooling) are pruned in increasing order of their mean activation on the fine-tuning
    part: a pruned input's weights in `layer` are zeroed and kept zero. Then every other
    parameter is fine-tuned with the objective's loss. `fraction` of the inputs are pruned, or,
    with `fraction` null, the paper's rule: as many as keep the validation part's clean accuracy
    within `max_drop` of the original."""

    def __init__(
        self,
        layer: str | None = None,
        fraction: float | None = None,
        max_drop: float = 0.04,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"FinePruning fraction must be in (0, 1] or null; got {fraction}")
        self.layer, self.fraction, self.max_drop = layer, fraction, max_drop
        self.pruned: list[int] = []

    def pruning_count(self, ctx: RepairContext, model: nn.Module, order: torch.Tensor) -> int:
        """How many of `order` (most dormant first) to prune: `fraction` of them, or the most
        whose pruning keeps validation clean accuracy within `max_drop`."""
        if self.fraction is not None:
            return max(1, int(self.fraction * len(order)))
        weight = model.get_submodule(self.target_layer(ctx)).weight
        start, kept = accuracy(model, ctx.val), weight.detach().clone()
        count = 0
        with torch.no_grad():
            for unit in order.tolist():
                weight[:, unit] = 0.0
                if start - accuracy(model, ctx.val) > self.max_drop:
                    break
                count += 1
            weight.copy_(kept)
        return count

    def target_layer(self, ctx: RepairContext) -> str:
        return self.layer or ctx.capture_plan.weight_layers()[-1]

    def targets(self, ctx, model, draw):
        layer = self.target_layer(ctx)
        order = torch.argsort(mean_inputs(model, layer, ctx.fine_tune), stable=True)
        self.pruned = sorted(order[: self.pruning_count(ctx, model, order)].tolist())
        masks = all_masks(model)
        with torch.no_grad():
            model.get_submodule(layer).weight[:, self.pruned] = 0.0
        masks[f"{layer}.weight"][:, self.pruned] = False
        units = {
            lay: list(range(model.get_submodule(lay).weight.shape[0]))
            for lay in ctx.capture_plan.weight_layers()
        }
        return masks, units

    def __call__(self, ctx: RepairContext, draw: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        model, info = super().__call__(ctx, draw)
        return model, {**info, "units_pruned": len(self.pruned), "pruned": self.pruned}


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
        model.eval()(images.x.to(next(model.parameters()).device))
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
            "dof": 0,
            "units_patched": sum(map(len, units.values())),
        }
        return model, info
