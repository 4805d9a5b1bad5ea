"""Trigger reverse-engineering (Neural Cleanse, Wang et al., S&P 2019) for a PyTorch model.

ART ships Neural Cleanse (`art.defences.transformer.poisoning.NeuralCleanse`), but it accepts
Keras classifiers only, so the optimisation is written here against the model itself. For every
class t it looks for the smallest stamp that sends clean inputs to t: a mask m (H x W) and a
pattern p (C x H x W), both in [0, 1], applied as x' = (1 - m) x + m p, minimising
cross-entropy(f(x'), t) + cost * |m|_1. The cost adapts as in the paper, but step by step on
single batches (the paper's code averages over an epoch and starts the cost at 0): it is
multiplied by `cost_up` after `patience` steps in a row in which the stamp sends at least
`success` of a batch to t, divided by `cost_up ** 1.5` after `patience` steps in which it does
not. A backdoor's target class needs a far smaller mask than any other; its anomaly index (how
many MADs its mask norm lies below the median) flags it. The suspect class's stamp is what a
defender who does not know the trigger can use in its place (`ReversedTrigger`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: The paper's consistency constant: MAD x 1.4826 estimates a normal distribution's std.
MAD_SCALE = 1.4826


@dataclass
class ReversedTrigger:
    """A stamp found by reverse-engineering: `mask` (1, H, W) and `pattern` (C, H, W)."""

    mask: torch.Tensor
    pattern: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mask, pattern = self.mask.to(x), self.pattern.to(x)
        return (1 - mask) * x + mask * pattern

    def binarized(self, threshold: float) -> ReversedTrigger:
        """The stamp at full strength where the mask reaches `threshold`, nothing elsewhere:
        the L1 cost leaves a mask just strong enough to flip the label, while a trigger is
        stamped whole."""
        return ReversedTrigger((self.mask >= threshold).to(self.mask.dtype), self.pattern)


@dataclass
class Reversal:
    """Every class's smallest stamp, its mask's L1 norm, the share of clean inputs it sends to
    the class (`success`), and the anomaly index of each norm."""

    triggers: list[ReversedTrigger]
    norms: list[float]
    success: list[float]
    threshold: float

    @property
    def anomaly(self) -> list[float]:
        return anomaly_index(self.norms).tolist()

    @property
    def suspect(self) -> int:
        """The class with the smallest mask: the backdoor's target if there is one."""
        return int(np.argmin(self.norms))

    @property
    def flagged(self) -> list[int]:
        """Classes whose anomaly index exceeds `threshold` (the paper: 2)."""
        return [c for c, a in enumerate(self.anomaly) if a > self.threshold]

    def summary(self) -> dict:
        return {
            "suspect": self.suspect,
            "flagged": self.flagged,
            "mask_l1": self.norms,
            "anomaly_index": self.anomaly,
            "success": self.success,
        }

    def plot(self, path: str | Path) -> Path:
        """Each class's mask and stamped pattern (m * p), its L1 norm and anomaly index in the
        title: the picture says where the trigger is and which class it serves."""
        n = len(self.triggers)
        fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 3.4), squeeze=False)
        for c, (trigger, norm, a) in enumerate(
            zip(self.triggers, self.norms, self.anomaly, strict=True)
        ):
            mask = trigger.mask[0].cpu().numpy()
            stamp = (trigger.mask * trigger.pattern).mean(0).cpu().numpy()
            axes[0, c].imshow(mask, cmap="gray", vmin=0, vmax=1)
            axes[1, c].imshow(stamp, cmap="gray", vmin=0, vmax=1)
            flag = "*" if c in self.flagged else ""
            axes[0, c].set_title(f"{c}{flag}\n|m| {norm:.1f}\nA {a:.1f}", fontsize=7)
            for ax in axes[:, c]:
                ax.set_axis_off()
        fig.suptitle(
            "reversed triggers: mask (top), mask x pattern (bottom); * flagged", fontsize=8
        )
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def anomaly_index(norms: Sequence[float]) -> np.ndarray:
    """How many (scaled) median absolute deviations each norm lies *below* the median
    (negative above it); 0 for every class when the norms do not vary."""
    values = np.asarray(norms, dtype=float)
    median = np.median(values)
    mad = MAD_SCALE * np.median(np.abs(values - median))
    return (median - values) / mad if mad > 0 else np.zeros_like(values)


def reverse_class(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    cost_up: float = 1.5,
    success: float = 0.99,
    patience: int = 5,
    seed: int = 0,
    region: torch.Tensor | None = None,
) -> tuple[ReversedTrigger, float, float]:
    """The smallest stamp found that sends at least `success` of a batch of `x` (images in
    [0, 1], as the project's loaders give them) to `target` (the last one when none did): the
    stamp, its mask's L1 norm and its success on all of `x`. `region` (H, W) of 0/1, when
    given, is where the mask may be non-zero."""
    if steps < 1:
        raise ValueError(f"a reversal needs at least one step; got steps={steps}")
    generator = torch.Generator().manual_seed(seed)
    x = x.to(next(model.parameters()).device)
    _, channels, height, width = x.shape
    mask_raw = torch.zeros(1, 1, height, width, device=x.device, requires_grad=True)
    pattern_raw = torch.zeros(1, channels, height, width, device=x.device, requires_grad=True)
    optimiser = torch.optim.Adam([mask_raw, pattern_raw], lr=lr, betas=(0.5, 0.9))
    cost, up, down = init_cost, 0, 0
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    best_norm = float("inf")
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            batch = x[torch.randint(len(x), (batch_size,), generator=generator).to(x.device)]
            mask = (torch.tanh(mask_raw) + 1) / 2
            if region is not None:
                mask = mask * region.to(mask)
            pattern = (torch.tanh(pattern_raw) + 1) / 2
            logits = model((1 - mask) * batch + mask * pattern)
            labels = torch.full((len(batch),), target, device=x.device)
            norm = mask.sum()
            loss = nn.functional.cross_entropy(logits, labels) + cost * norm
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            hit = float((logits.argmax(1) == target).float().mean())
            size = float(norm.detach())
            if hit >= success and size < best_norm:
                best, best_norm = (mask.detach()[0], pattern.detach()[0]), size
            up, down = (up + 1, 0) if hit >= success else (0, down + 1)
            if up >= patience:
                cost, up = cost * cost_up, 0
            elif down >= patience:
                cost, down = cost / cost_up**1.5, 0
    finally:
        for p in trainable:
            p.requires_grad_(True)
    if best is None:
        best, best_norm = (mask.detach()[0], pattern.detach()[0]), size
    trigger = ReversedTrigger(*best)
    with torch.no_grad():
        rate = float((model(trigger(x)).argmax(1) == target).float().mean())
    return trigger, best_norm, rate


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (a reversal must not move BatchNorm statistics), then back in the
    mode it was in."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def draw_inputs(x: torch.Tensor, max_inputs: int, seed: int) -> torch.Tensor:
    """At most `max_inputs` of `x`, drawn with `seed`, in their original order."""
    order = np.random.default_rng(seed).permutation(len(x))[:max_inputs]
    return x[torch.as_tensor(np.sort(order))]


def reverse_engineer(
    model: nn.Module,
    x: torch.Tensor,
    num_classes: int | None = None,
    threshold: float = 2.0,
    max_inputs: int = 2000,
    seed: int = 0,
    **settings,
) -> Reversal:
    """Neural Cleanse over every class on (at most `max_inputs`, seeded) clean inputs `x`;
    `settings` go to :func:`reverse_class`; `num_classes`: the model's outputs by default. The
    model runs in eval mode and is left in the mode it was in."""
    with evaluating(model):
        if num_classes is None:
            with torch.no_grad():
                num_classes = model(x[:1].to(next(model.parameters()).device)).shape[1]
        if num_classes < 3:
            raise ValueError(f"an anomaly index needs at least 3 classes; got {num_classes}")
        x = draw_inputs(x, max_inputs, seed)
        found = [
            reverse_class(model, x, c, seed=seed + c, **settings)
            for c in tqdm(range(num_classes), desc="reverse-engineering triggers", leave=False)
        ]
    return Reversal([f[0] for f in found], [f[1] for f in found], [f[2] for f in found], threshold)
