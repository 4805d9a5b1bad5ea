"""Adversarial example generation: thin wrappers over ART evasion attacks.

An :class:`Attack` is configured once (its ART attack as a partial, e.g. from a Hydra config with
`_partial_: true`) and called on any model and tensor batch. The model is an argument of the call,
not of the configuration, because repair re-runs the same attack against every evaluated model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ipg_gnn.errors import ConfigError


@dataclass(frozen=True)
class AttackResult:
    """Adversarial inputs, the model's predictions on them, and whether each attack succeeded:
    the model was right on the clean input and is wrong on the adversarial one."""

    x_adv: torch.Tensor
    pred: torch.Tensor
    success: torch.Tensor


def art_classifier(model: nn.Module, x: torch.Tensor, clip_values: tuple[float, float]):
    """Wrap `model` as an ART PyTorchClassifier on the device it lives on."""
    from art.estimators.classification import PyTorchClassifier

    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        nb_classes = int(model(x[:1].to(device)).shape[1])
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=nb_classes,
        clip_values=clip_values,
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def seed_attack_rng(seed: int) -> None:
    """Seed the generators ART's random starts draw from (numpy's global one and torch's), so
    an attack on the same inputs gives the same adversarial examples."""
    np.random.seed(seed)
    torch.manual_seed(seed)


class Attack:
    """A named ART evasion attack, configured once and called on `(model, x, y)` batches."""

    def __init__(
        self,
        name: str,
        art_attack: Callable,
        batch_size: int = 256,
        clip_values: tuple[float, float] = (0.0, 1.0),
        progress: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"attack batch_size must be positive, got {batch_size}")
        self.name = name
        self.art_attack = art_attack
        self.batch_size = batch_size
        self.clip_values = tuple(clip_values)
        self.progress = progress

    @property
    def eps(self) -> float | None:
        """The perturbation budget, where the attack has one (CW has none)."""
        if isinstance(self.art_attack, functools.partial):
            eps = self.art_attack.keywords.get("eps")
            return None if eps is None else float(eps)
        return None

    @property
    def uses_gradients(self) -> bool:
        """Whether the ART attack needs the model's gradients (Square, a query attack, does not):
        gradient-free attacks are the check on gradient masking."""
        from art.estimators.classification.classifier import ClassGradientsMixin
        from art.estimators.estimator import LossGradientsMixin

        attack = getattr(self.art_attack, "func", self.art_attack)
        needs = getattr(attack, "_estimator_requirements", ())
        return any(issubclass(r, LossGradientsMixin | ClassGradientsMixin) for r in needs)

    def __repr__(self) -> str:
        return f"Attack({self.name!r}, eps={self.eps})"

    def with_params(self, **art_params) -> Attack:
        """A copy whose ART attack gets `art_params` in place of its configured ones (e.g. another
        eps or max_iter), for sweeps over a configured attack."""
        if not isinstance(self.art_attack, functools.partial):
            raise TypeError(f"{self.name}: with_params needs the ART attack as a functools.partial")
        art = self.art_attack
        return Attack(
            self.name,
            functools.partial(art.func, *art.args, **{**art.keywords, **art_params}),
            self.batch_size,
            self.clip_values,
            self.progress,
        )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Craft adversarial versions of `x` (labels `y`) against `model`, batch by batch."""
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if len(x) == 0:
            raise ValueError(f"{self.name}: nothing to attack (empty batch)")
        from art.attacks.evasion import SquareAttack

        if getattr(self.art_attack, "func", None) is SquareAttack and min(x.shape[-2:]) < 2:
            raise ConfigError(
                f"attack {self.name}: Square perturbs square image tiles, and these inputs are "
                f"{tuple(x.shape[1:])} (tabular rows?); leave it out of `attack` and use "
                "robust_eval=none"
            )
        classifier = art_classifier(model, x, self.clip_values)
        attack = self.art_attack(classifier)
        chunks = []
        for i in tqdm(
            range(0, len(x), self.batch_size),
            desc=f"attack {self.name}",
            disable=not self.progress,
            leave=False,
        ):
            xb = x[i : i + self.batch_size].detach().cpu().numpy().astype(np.float32)
            yb = y[i : i + self.batch_size].cpu().numpy()
            chunks.append(torch.from_numpy(attack.generate(x=xb, y=yb).astype(np.float32)))
        x_adv = torch.cat(chunks)

        def labels(inputs: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(
                classifier.predict(inputs, batch_size=self.batch_size).argmax(1)
            )

        pred, y = labels(x_adv.numpy()), y.cpu()
        # Success: right before, wrong after (an input the model already got wrong is no win).
        clean = labels(x.detach().cpu().numpy().astype(np.float32))
        return AttackResult(x_adv, pred, (clean == y) & (pred != y))
