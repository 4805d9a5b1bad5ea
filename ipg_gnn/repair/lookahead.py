"""How good is a plan, without a full repair run?

A plan is good when adapting only its targets lowers the objective's repair loss quickly. The
look-ahead adapts a copy of the model for a few masked fine-tuning steps on the repair split's
fine-tuning part and measures the repair loss on its validation part before and after (for
robustness: cross-entropy on clean inputs and on adversarial inputs crafted against the model at
hand). Plans of the same budget are compared by that fall; random plans give the chance level.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.objectives import RepairLoss
from ipg_gnn.repair.finetune import masked_finetune
from ipg_gnn.repair.masks import Masks
from ipg_gnn.repair.updates import Update


def mean_loss(model: nn.Module, images: Images, loss_fn: RepairLoss, batch_size: int) -> float:
    """The repair loss averaged over `images` (the loss may craft inputs, so no `no_grad`);
    every call uses the first step's seed, so losses before and after compare like for like."""
    total, device = 0.0, next(model.parameters()).device
    with loss_fn.attach(model):
        for i in range(0, len(images), batch_size):
            batch = images.subset(range(i, min(i + batch_size, len(images)))).to(device)
            total += float(loss_fn(model, batch, 1).detach()) * len(batch)
    return total / len(images)


def check_lookahead_inputs(steps: int, batch_size: int, available: int) -> None:
    """Refuse a look-ahead the fine-tuning part cannot feed (each step takes fresh inputs):
    jobs call it before their attribution, so the error comes before the expensive work."""
    if steps * batch_size > available:
        raise ValueError(
            f"a look-ahead of {steps} steps of {batch_size} needs {steps * batch_size} inputs; "
            f"the fine-tuning part has {available}: lower its steps or batch_size"
        )


def lookahead_gain(
    model: nn.Module,
    masks: Masks,
    train: Images,
    val: Images,
    loss_fn: RepairLoss,
    steps: int = 20,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    update: Update | None = None,
) -> dict[str, float]:
    """Repair loss on `val` before and after `steps` masked steps on `train` (a copy of `model`
    is adapted, through `update`: how the planned entries change), and the relative fall
    `gain` = (before - after) / before."""
    check_lookahead_inputs(steps, batch_size, len(train))
    trial = copy.deepcopy(model).eval()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    with loss_fn.attach(model):  # a loss that compares with the model as repair starts keeps
        before = mean_loss(trial, val, loss_fn, batch_size)  # the original, not the copy
        masked_finetune(
            trial,
            (update or Update()).apply(trial, masks, seed),
            train.subset(order[: steps * batch_size]),
            val,
            loss_fn,
            epochs=1,
            lr=lr,
            batch_size=batch_size,
            tolerance=float("inf"),
            check_every=steps,
            patience=None,
            seed=seed,
            progress=False,
        )
        after = mean_loss(trial, val, loss_fn, batch_size)
    return {"before": before, "after": after, "gain": (before - after) / before}
