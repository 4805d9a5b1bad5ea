"""Targeted repair by masked fine-tuning.

Only the entries a mask allows may change: their gradients are masked and, after every
optimiser step, every other entry is written back from the original model, so it stays
bit-identical. The model stays in eval mode throughout, so BatchNorm statistics and dropout do
not change either. The loss comes from the objective (for robustness: cross-entropy on clean
inputs and on adversarial inputs crafted against the model being repaired at that step). Every
`check_every` steps the clean accuracy on a validation part is measured; once it has stayed more
than `tolerance` below the start for `patience` checks in a row, training stops (`patience=None`:
never, the whole schedule runs; with `rollback`, training goes back to the last weights within
the tolerance and goes on instead of stopping). The weights returned are always the last ones
that were within tolerance at a check. Adversarial fine-tuning dips clean accuracy for hundreds
of steps before recovering it (full MNIST, every parameter: 95.8% at first, 96.7% after 20
epochs, from 97.3%), so any early stop during the dip returns a model that has barely changed.
`tolerance_start` anneals the tolerance: it starts there and falls linearly to `tolerance` over
the first `anneal_fraction` of the steps, so with `rollback` training may wander far from the
clean optimum early and is pulled back ever closer to it (the weights returned are still the
last within `tolerance` itself).

A plain loop rather than a Lightning `Trainer`: the per-step write-back and the eval-mode
training are the whole point here, and a loop states them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ipg_gnn.data import Images
from ipg_gnn.objectives import RepairLoss
from ipg_gnn.repair.masks import Masks
from ipg_gnn.targets import accuracy


def masked_finetune(
    model: nn.Module,
    masks: Masks,
    train: Images,
    val: Images,
    loss_fn: RepairLoss,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 128,
    tolerance: float = 0.01,
    check_every: int = 1,
    patience: int | None = 1,
    seed: int = 0,
    progress: bool = True,
    baseline_acc: float | None = None,
    tolerance_start: float | None = None,
    anneal_fraction: float = 0.5,
    rollback: bool = False,
) -> dict:
    """Fine-tune `model` in place, changing only what `masks` allows. Returns a summary.
    `baseline_acc`: the validation clean accuracy to stay within `tolerance` of (default: the
    model's at the start; a method that edits the model first passes the original's)."""
    if check_every < 1 or (patience is not None and patience < 1):
        raise ValueError(f"check_every and patience must be >= 1; got {check_every}, {patience}")
    if rollback and patience is None:
        raise ValueError("rollback goes back after `patience` checks beyond the tolerance; set it")
    annealed = tolerance_start is not None
    if annealed and (tolerance_start < tolerance or not 0 < anneal_fraction <= 1):
        raise ValueError(
            f"an annealed tolerance starts at or above `tolerance` ({tolerance}) and falls over a "
            f"fraction in (0, 1] of the steps; got {tolerance_start} over {anneal_fraction}"
        )
    params = dict(model.named_parameters())
    unknown = set(masks) - set(params)
    if unknown:
        raise ValueError(f"masks name parameters the model does not have: {sorted(unknown)}")
    original = {name: p.detach().clone() for name, p in params.items()}
    trainable = {name: params[name] for name, m in masks.items() if m.any()}
    if not trainable:
        raise ValueError("the masks allow no parameter to change: nothing to fine-tune")
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    device = next(model.parameters()).device
    masks = {name: m.to(device) for name, m in masks.items()}
    optimizer = torch.optim.Adam(trainable.values(), lr=lr)
    model.eval()
    start_acc = accuracy(model, val)
    baseline_acc = start_acc if baseline_acc is None else baseline_acc
    # Only trainable tensors ever change, so they alone are kept as states to go back to.
    kept = Checkpoints(trainable, baseline_acc - start_acc, tolerance)
    history: list[dict] = []
    generator = torch.Generator().manual_seed(seed)
    batches = (
        (epoch, order[i : i + batch_size])
        for epoch in range(epochs)
        for order in [torch.randperm(len(train), generator=generator)]
        for i in range(0, len(train), batch_size)
    )
    total = epochs * -(-len(train) // batch_size)
    schedule = AnnealedTolerance(tolerance, tolerance_start, anneal_fraction * total)
    strikes = 0
    try:
        with loss_fn.attach(model):
            for step, (epoch, idx) in enumerate(
                tqdm(batches, total=total, desc="repair", disable=not progress, leave=False), 1
            ):
                loss = loss_fn(model, train.subset(idx).to(device), step)
                optimizer.zero_grad()
                loss.backward()
                for name, p in trainable.items():
                    p.grad.mul_(masks[name])
                optimizer.step()
                with torch.no_grad():
                    for name, p in trainable.items():
                        p.copy_(torch.where(masks[name], p, original[name]))
                if step % check_every and step != total:
                    continue
                acc, allowed = accuracy(model, val), schedule(step)
                history.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "val_clean_acc": acc,
                        "tolerance": allowed,
                        "loss": float(loss.detach()),
                    }
                )
                if baseline_acc - acc <= allowed:
                    strikes = 0
                    kept.add(trainable, baseline_acc - acc)
                    continue
                strikes += 1
                if patience is not None and strikes >= patience:
                    if not rollback:
                        history[-1]["stopped"] = "clean accuracy fell more than the tolerance"
                        break
                    kept.restore(trainable, allowed)
                    optimizer.state.clear()  # the moments still point the way that went wrong
                    history[-1]["rolled_back"] = True
                    strikes = 0
            # The last weights within the (final) tolerance: later ones went too far.
            within = kept.restore(trainable, tolerance)
    finally:
        for p in params.values():
            p.requires_grad_(True)
    return {
        "val_clean_acc_before": baseline_acc,
        "history": history,
        "within_tolerance": within,
        **changed_params(model, original),
    }


def changed_params(model: nn.Module, original: dict[str, torch.Tensor]) -> dict[str, float]:
    """How many parameter entries of `model` differ from `original` (name -> tensor), and
    their fraction of all entries."""
    params = dict(model.named_parameters())
    changed = sum(int((p.detach() != original[n]).sum()) for n, p in params.items())
    return {
        "params_changed": changed,
        "params_changed_fraction": changed / sum(p.numel() for p in params.values()),
    }


@dataclass
class AnnealedTolerance:
    """The clean-accuracy tolerance at a step: `start` falling linearly to `end` over the
    first `steps` steps, then `end` (`start` None: `end` throughout)."""

    end: float
    start: float | None
    steps: float

    def __call__(self, step: int) -> float:
        if self.start is None or step >= self.steps:
            return self.end
        return self.end + (self.start - self.end) * (1 - step / self.steps)


class Checkpoints:
    """The states a fine-tuning run may go back to: for any tolerance, the last state checked
    within it. Tolerances only shrink, so a state is dropped once a later one is at least as
    accurate, or once a later one is within the final tolerance `floor` (every later query
    accepts that one). The first state (the start) stays as the fallback when nothing else is
    within a tolerance; with a fixed tolerance at most two states are held."""

    def __init__(self, params: dict[str, nn.Parameter], drop: float, floor: float) -> None:
        self.floor = floor
        self.states = [(drop, self._copy(params))]

    @staticmethod
    def _copy(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in params.items()}

    def add(self, params: dict[str, nn.Parameter], drop: float) -> None:
        """Keep the current state, checked at `drop` below the baseline accuracy."""
        while len(self.states) > 1 and (self.states[-1][0] >= drop or drop <= self.floor):
            self.states.pop()
        self.states.append((drop, self._copy(params)))

    def restore(self, params: dict[str, nn.Parameter], tolerance: float) -> bool:
        """Load the last state within `tolerance` (the start if none is); whether it is."""
        while len(self.states) > 1 and self.states[-1][0] > tolerance:
            self.states.pop()
        drop, state = self.states[-1]
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name])
        return drop <= tolerance
