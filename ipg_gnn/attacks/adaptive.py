"""An adaptive L-inf PGD: fool the classifier and a detector of adversarial inputs together.

A detector evaluated only on attacks that ignore it says little: Carlini & Wagner (2017)
bypassed ten detectors by attacking the classifier and the detector together, and Tramer et al.
(2020) show how to build such an attack per defence. Here the detector is any differentiable
function from the input to its logit (:class:`ipg_gnn.detect.InputLogit`: capture the IPG, then
score it), and the attack runs, per batch, every configured mode with `restarts` random starts:

* `joint`: minimise `max(z_y - max_{i != y} z_i, -kappa) + detector_weight * detector logit`,
  a weighted sum of the C&W margin loss (satisfied once the input is misclassified by `kappa`)
  and the detector's logit;
* `two_phase`: per input, step on the margin loss until the input is misclassified by `kappa`,
  then on the detector's logit alone (back to the margin when it stops being misclassified).

Every iterate is a candidate: per input the attack keeps the misclassified one of lowest
detector logit over all steps, modes and restarts (the last iterate where none misclassifies).
Without a detector it is a plain margin-loss PGD with the same budget (as many runs as modes
times restarts): the classifier-only attacker it is compared with. Written in torch, as ART's
attacks take one classifier loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ipg_gnn.attacks.evasion import AttackResult
from ipg_gnn.attacks.reference import margin_loss

MODES = ("joint", "two_phase")
DetectorLogit = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AdaptiveResult(AttackResult):
    """An attack result with the detector's logit on each returned input (None without one)."""

    detector_logit: torch.Tensor | None = None


class AdaptivePGD:
    """L-inf PGD against a classifier and, when given one, a detector's logit (see module doc).
    Called like an :class:`~ipg_gnn.attacks.Attack`, `(model, x, y)`, plus the detector."""

    def __init__(
        self,
        eps: float,
        eps_step: float,
        steps: int = 50,
        restarts: int = 1,
        modes: Sequence[str] = MODES,
        detector_weight: float = 1.0,
        kappa: float = 1.0,
        clip_values: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = True,
        name: str = "adaptive_pgd",
    ) -> None:
        unknown = set(modes) - set(MODES)
        if unknown or not modes:
            raise ValueError(f"modes must be a non-empty subset of {list(MODES)}; got {modes}")
        if eps < 0 or eps_step <= 0 or steps < 1 or restarts < 1 or batch_size < 1:
            raise ValueError("need eps >= 0, eps_step > 0, steps, restarts and batch_size >= 1")
        if detector_weight < 0 or kappa < 0:
            raise ValueError("detector_weight and kappa must be >= 0")
        self.name, self.eps, self.eps_step = name, eps, eps_step
        self.steps, self.restarts, self.modes = steps, restarts, tuple(modes)
        self.detector_weight, self.kappa = detector_weight, kappa
        self.clip_values = tuple(clip_values)
        self.batch_size, self.seed, self.progress = batch_size, seed, progress

    def __repr__(self) -> str:
        return (
            f"AdaptivePGD(eps={self.eps}, eps_step={self.eps_step}, steps={self.steps}, "
            f"restarts={self.restarts}, modes={self.modes}, detector_weight="
            f"{self.detector_weight}, kappa={self.kappa})"
        )

    def with_eps(self, eps: float) -> AdaptivePGD:
        """The same attack at budget `eps`, its step scaled by the same factor (a sweep keeps
        the number of steps needed to cross the ball)."""
        scaled = AdaptivePGD.__new__(AdaptivePGD)
        scaled.__dict__.update(self.__dict__, eps=eps, eps_step=self.eps_step * eps / self.eps)
        return scaled

    def _loss(self, mode: str, margin: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
        """Per-input loss to minimise; `margin` > 0 means misclassified."""
        if mode == "classifier":
            return -margin
        if mode == "joint":
            return (-margin).clamp_min(-self.kappa) + self.detector_weight * logit
        return torch.where(margin > self.kappa, logit, -margin)

    def _run(
        self,
        model: nn.Module,
        detector: DetectorLogit | None,
        mode: str,
        x: torch.Tensor,
        y: torch.Tensor,
        best: list[torch.Tensor],
        generator: torch.Generator,
    ) -> None:
        """One random start on one batch; updates `best` = [inputs, logits, fooled] in place
        with every misclassified iterate of lower detector logit."""
        lo, hi = self.clip_values
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device)
        x_k = (x + self.eps * noise).clamp(lo, hi)
        for step in range(self.steps + 1):
            x_k.requires_grad_(True)
            margin = margin_loss(model(x_k), y)
            logit = torch.zeros_like(margin) if detector is None else detector(x_k)
            logit = logit.to(margin.dtype)
            fooled = margin.detach() > 0
            better = fooled & (~best[2] | (logit.detach() <= best[1]))
            better |= ~fooled & ~best[2]  # nothing misclassified yet: keep the latest iterate
            best[0][better], best[1][better] = x_k.detach()[better], logit.detach()[better]
            best[2] |= fooled
            if step == self.steps:
                return
            grad = torch.autograd.grad(self._loss(mode, margin, logit).sum(), x_k)[0]
            x_k = x_k.detach() - self.eps_step * grad.sign()
            x_k = torch.min(torch.max(x_k, x - self.eps), x + self.eps).clamp(lo, hi)

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        detector: DetectorLogit | None = None,
    ) -> AdaptiveResult:
        """Attack `x` (labels `y`) against `model` and, if given, `detector` (input -> logit).
        Success: right on the clean input, wrong on the returned one."""
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"{self.name}: need as many labels as inputs, and some; got "
                f"{len(x)} inputs, {len(y)} labels"
            )
        model.eval()
        generator = torch.Generator().manual_seed(self.seed)
        # Without a detector, as many classifier-only runs as there are modes: the same budget.
        modes = self.modes if detector is not None else ("classifier",) * len(self.modes)
        x_adv = x.clone()
        logits = torch.full((len(x),), float("inf"))
        fooled = torch.zeros(len(x), dtype=torch.bool)
        runs = [
            (i, mode)
            for i in range(0, len(x), self.batch_size)
            for mode in modes
            for _ in range(self.restarts)
        ]
        for i, mode in tqdm(runs, desc=self.name, disable=not self.progress, leave=False):
            s = slice(i, i + self.batch_size)
            best = [x_adv[s], logits[s], fooled[s]]  # views: updated in place
            self._run(model, detector, mode, x[s], y[s], best, generator)
        with torch.no_grad():
            pred = torch.cat([model(x_adv[s]).argmax(1) for s in _slices(len(x), self.batch_size)])
            clean = torch.cat([model(x[s]).argmax(1) for s in _slices(len(x), self.batch_size)])
        return AdaptiveResult(
            x_adv, pred, (clean == y) & (pred != y), logits if detector is not None else None
        )


def _slices(n: int, size: int) -> list[slice]:
    return [slice(i, i + size) for i in range(0, n, size)]
