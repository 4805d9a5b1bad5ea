"""Honest robustness evaluation of an original, repaired or baseline model.

Every attack is crafted anew against the model evaluated (adaptive white-box for the gradient
attacks; Square is gradient-free and exposes gradient masking). Accuracy on adversarial
examples crafted against another model (the original) is reported separately, as `transfer`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ipg_gnn.attacks import Attack, seed_attack_rng
from ipg_gnn.data import Images
from ipg_gnn.targets import accuracy


def evaluate_attacks(
    model: nn.Module,
    images: Images,
    attacks: Mapping[str, Attack],
    batch_size: int = 1000,
    seed: int = 0,
    transfer_from: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Clean accuracy and accuracy under every attack re-crafted against `model` (each attack's
    random start seeded with `seed`), plus accuracy on the given adversarial inputs of another
    model (`transfer_from`). Returns the report and the adversarial inputs crafted here."""
    report: dict[str, Any] = {
        "n": len(images),
        "clean_acc": accuracy(model, images, batch_size),
        "adv_acc": {},
        "attack_success_rate": {},
        "eps": {},
    }
    examples = {}
    for name, attack in attacks.items():
        seed_attack_rng(seed)
        result = attack(model, images.x, images.y)
        examples[name] = result.x_adv
        report["adv_acc"][name] = float((result.pred == images.y).float().mean())
        report["attack_success_rate"][name] = float(result.success.float().mean())
        report["eps"][name] = attack.eps
    if transfer_from:
        report["transfer_acc"] = {
            name: accuracy(model, Images(x, images.y), batch_size)
            for name, x in transfer_from.items()
        }
    return report, examples


class ActivationPatch(nn.Module):
    """A copy of `model` in which given units of given layers output fixed values (benign
    statistics) at inference: the prior work's repair, kept as a baseline. `patches` maps a
    layer to (units, values)."""

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
