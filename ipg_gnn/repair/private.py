"""DP-SGD fine-tuning of the whole model (opacus): a privacy repair baseline (issue 17).

Every parameter of a copy of the original model is fine-tuned on the repair split's fine-tuning
part with plain cross-entropy through opacus's `PrivacyEngine`: each step samples a Poisson batch
(every input in with probability `batch_size / n`), clips each input's gradient to
`max_grad_norm` and adds Gaussian noise of `noise_multiplier * max_grad_norm` to their sum. With
`target_epsilon`, opacus chooses the noise multiplier that spends that budget over the schedule
(`make_private_with_epsilon`). The schedule's `epochs`, `lr` (Adam, as in `masked_finetune`) and
`batch_size` (here the expected batch size) mean what they mean for the other methods; its
clean-accuracy tolerance and checkpoints do not apply: the last weights are returned.

The epsilon reported covers only the fine-tuning inputs and these steps, not the data the
original model was trained on: this is a baseline of how much noisy whole-model fine-tuning
reduces what an attack can tell, not a DP guarantee of the repaired model.

The model trains as in the other methods, in eval mode (dropout off), except for its modules
that hold parameters: opacus captures per-sample gradients only in training mode. A module whose
training mode differs in more than that (BatchNorm) is refused before any work.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ipg_gnn.errors import ConfigError
from ipg_gnn.repair.finetune import changed_params, masked_finetune
from ipg_gnn.repair.methods import RepairContext, RepairMethod
from ipg_gnn.targets import accuracy

#: The schedule settings (`repair.finetune`) DP-SGD uses; the others are the masked loop's.
SCHEDULE = ("epochs", "lr", "batch_size", "progress")
ACCOUNTANTS = ("prv", "rdp", "gdp")


def default_delta(n: int) -> float:
    """The largest power of ten below 1/n (n = 5,600 or 1,000 inputs: 1e-4; 96: 1e-2)."""
    return 10.0 ** -(math.floor(math.log10(n)) + 1)


def dp_incompatible(model: nn.Module) -> list[str]:
    """The modules of `model` opacus cannot train privately, as `Type (name, ...)`."""
    found: dict[str, list[str]] = {}
    for name, module in trainable_modules(copy.deepcopy(model).train().requires_grad_(True)):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is not None and validator(module):
            found.setdefault(type(module).__name__, []).append(name)
    return [f"{kind} ({', '.join(names)})" for kind, names in found.items()]


def train_parametrised_modules(model: nn.Module) -> nn.Module:
    """Training mode for modules holding parameters (opacus's hooks need it), eval for the rest
    (dropout off, as in the other methods)."""
    for module in model.modules():
        module.train(any(True for _ in module.parameters(recurse=False)))
    return model


class DPSGDFinetune(RepairMethod):
    """Whole-model DP-SGD fine-tuning with cross-entropy; see the module docstring.
    `noise_multiplier` (ignored with `target_epsilon`), `max_grad_norm`: opacus's; `delta`: of
    the (epsilon, delta) reported (default `default_delta` of the fine-tuning part's size);
    `accountant`: opacus's privacy accountant (`prv`, its default; `rdp`; `gdp`)."""

    def __init__(
        self,
        noise_multiplier: float = 1.0,
        max_grad_norm: float = 1.0,
        target_epsilon: float | None = None,
        delta: float | None = None,
        accountant: str = "prv",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if noise_multiplier < 0 or max_grad_norm <= 0:
            raise ConfigError(
                "DP-SGD needs noise_multiplier >= 0 and max_grad_norm > 0; got "
                f"{noise_multiplier}, {max_grad_norm}"
            )
        if target_epsilon is not None and target_epsilon <= 0:
            raise ConfigError(f"DP-SGD target_epsilon must be > 0 or null; got {target_epsilon}")
        if delta is not None and not 0 < delta < 1:
            raise ConfigError(f"DP-SGD delta must be in (0, 1) or null; got {delta}")
        if accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"DP-SGD accountant must be one of {', '.join(ACCOUNTANTS)}; got {accountant!r}"
            )
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.target_epsilon, self.delta, self.accountant = target_epsilon, delta, accountant

    def check(self, name: str, finetune: Sequence[str], loss: Sequence[str]) -> None:
        """As every method's, but only the schedule settings DP-SGD uses may be overridden, and
        no loss setting (it trains with plain cross-entropy, not the objective's loss)."""
        if self.loss:
            raise ConfigError(
                f"repair.methods.{name}.loss sets {sorted(self.loss)}; DP-SGD fine-tunes with "
                "plain cross-entropy and takes no loss settings"
            )
        super().check(name, [k for k in finetune if k in SCHEDULE], [])

    def check_model(self, name: str, model: nn.Module) -> None:
        bad = dp_incompatible(model)
        if bad:
            raise ConfigError(
                f"{name}: opacus cannot train {type(model).__name__} with DP-SGD: "
                f"{'; '.join(bad)} (BatchNorm mixes the inputs of a batch; opacus's "
                "ModuleValidator.fix would swap in GroupNorm, a different model); drop this "
                "method or use a target without them"
            )

    def __call__(self, ctx: RepairContext, draw: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        self.check_model("DP-SGD fine-tuning", ctx.model)
        defaults = inspect.signature(masked_finetune).parameters
        schedule = {k: defaults[k].default for k in SCHEDULE} | {
            k: v for k, v in self.schedule(ctx).items() if k in SCHEDULE
        }
        if schedule["epochs"] < 1:
            raise ConfigError(f"DP-SGD fine-tuning needs epochs >= 1; got {schedule['epochs']}")
        seed = ctx.seed + draw
        delta = self.delta or default_delta(len(ctx.fine_tune))
        model = copy.deepcopy(ctx.model).train().requires_grad_(True)
        loader = DataLoader(
            TensorDataset(ctx.fine_tune.x, ctx.fine_tune.y),
            batch_size=schedule["batch_size"],
            generator=torch.Generator().manual_seed(seed),  # Poisson sampling draws from it
        )
        private = dict(
            module=model,
            optimizer=torch.optim.Adam(model.parameters(), lr=schedule["lr"]),
            data_loader=loader,
            max_grad_norm=self.max_grad_norm,
            noise_generator=torch.Generator(next(model.parameters()).device).manual_seed(seed),
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            engine = PrivacyEngine(accountant=self.accountant)
            if self.target_epsilon is None:
                module, optimizer, loader = engine.make_private(
                    **private, noise_multiplier=self.noise_multiplier
                )
            else:
                module, optimizer, loader = engine.make_private_with_epsilon(
                    **private,
                    target_epsilon=self.target_epsilon,
                    target_delta=delta,
                    epochs=schedule["epochs"],
                )
            history = self._train(module, optimizer, loader, ctx, engine, delta, schedule)
        repaired = copy.deepcopy(ctx.model)
        repaired.load_state_dict(module._module.state_dict())
        original = {name: p.detach() for name, p in ctx.model.named_parameters()}
        dof = sum(p.numel() for p in original.values())
        return repaired, {
            "val_clean_acc_before": accuracy(ctx.model, ctx.val),
            "history": history,
            **changed_params(repaired, original),
            "params_allowed": dof,
            "dof": dof,
            "privacy": {
                "epsilon": history[-1]["epsilon"],
                "delta": delta,
                "noise_multiplier": optimizer.noise_multiplier,
                "max_grad_norm": self.max_grad_norm,
                "sample_rate": 1 / len(loader),
                "steps": history[-1]["step"],
                "accountant": self.accountant,
            },
        }

    @staticmethod
    def _train(module, optimizer, loader, ctx, engine, delta, schedule) -> list[dict]:
        """The DP-SGD epochs; validation clean accuracy and epsilon spent after each."""
        history, step = [], 0
        device = next(module.parameters()).device
        bar = tqdm(
            total=schedule["epochs"] * len(loader),
            desc="dp-sgd",
            disable=not schedule["progress"],
            leave=False,
        )
        with bar:
            for epoch in range(schedule["epochs"]):
                train_parametrised_modules(module)
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = F.cross_entropy(module(x.to(device)), y.to(device))
                    loss.backward()
                    optimizer.step()
                    step += 1
                    bar.update()
                history.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "val_clean_acc": accuracy(module, ctx.val),  # leaves it in eval mode
                        "loss": float(loss.detach()),
                        "epsilon": float(engine.get_epsilon(delta)),  # numpy from opacus
                    }
                )
        return history
