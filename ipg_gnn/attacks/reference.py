"""An independent L-inf PGD, written directly in torch, to check the reporting ensemble.

It shares no code with ART, so a bug or a weakness of the ensemble's attacks (ART's APGD keeps
only the last iterate of a restart, for instance) shows up as a gap between the two. It is a
check, not a reported number: robust accuracy is reported with :func:`robust_accuracy`.

Every (loss, restart) run starts from a uniform random point of the eps-ball and takes `steps`
signed-gradient steps; an input counts as broken as soon as any iterate of any run fools the
model, so it is robust only if every run fails at every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ipg_gnn.attacks.evasion import AttackResult

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW-style margin per input: best other logit minus the true one (> 0 means fooled)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per input."""
    return F.cross_entropy(logits, y, reduction="none")


LOSSES: dict[str, Loss] = {"ce": ce_loss, "margin": margin_loss}


class ReferencePGD:
    """Plain PGD with random restarts and several losses; called like an :class:`Attack`."""

    def __init__(
        self,
        eps: float,
        eps_step: float,
        steps: int = 200,
        restarts: int = 5,
        losses: Sequence[str] = ("ce", "margin"),
        clip_values: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        unknown = set(losses) - set(LOSSES)
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; known: {sorted(LOSSES)}")
        if eps < 0 or eps_step <= 0 or steps < 1 or restarts < 1:
            raise ValueError("need eps >= 0, eps_step > 0, steps >= 1 and restarts >= 1")
        self.name = "reference_pgd"
        self.eps, self.eps_step, self.steps, self.restarts = eps, eps_step, steps, restarts
        self.losses = tuple(losses)
        self.clip_values = tuple(clip_values)
        self.batch_size = batch_size
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"ReferencePGD(eps={self.eps}, steps={self.steps}, restarts={self.restarts}, "
            f"losses={self.losses})"
        )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Attack `x` (labels `y`); inputs misclassified clean count as broken at once."""
        model.eval()
        generator = torch.Generator().manual_seed(self.seed)
        x_adv, fooled = x.clone(), self._predict(model, x) != y
        for loss in self.losses:
            for _ in range(self.restarts):
                alive = (~fooled).nonzero().squeeze(1)
                for i in range(0, len(alive), self.batch_size):
                    idx = alive[i : i + self.batch_size]
                    xb, hit = self._run(model, x[idx], y[idx], LOSSES[loss], generator)
                    x_adv[idx], fooled[idx] = xb, hit
        pred = self._predict(model, x_adv)
        return AttackResult(x_adv, pred, pred != y)

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss, generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One restart on one batch: the first fooling iterate of each input (else the last
        iterate) and whether one was found."""
        lo, hi = self.clip_values
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device)
        x_k = (x + self.eps * noise).clamp(lo, hi)
        best, hit = x_k.clone(), torch.zeros(len(x), dtype=torch.bool)
        for _ in range(self.steps):
            x_k.requires_grad_(True)
            logits = model(x_k)
            grad = torch.autograd.grad(loss(logits, y).sum(), x_k)[0]
            x_k = x_k.detach()
            new = (logits.argmax(1) != y) & ~hit
            best[new], hit = x_k[new], hit | new
            step = x_k + self.eps_step * grad.sign()
            x_k = torch.min(torch.max(step, x - self.eps), x + self.eps).clamp(lo, hi)
        new = (self._predict(model, x_k) != y) & ~hit
        best[~hit] = x_k[~hit]
        return best, hit | new

    @torch.no_grad()
    def _predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [model(x[i : i + self.batch_size]).argmax(1) for i in range(0, len(x), self.batch_size)]
        )
