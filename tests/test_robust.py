"""Robust accuracy over an ensemble, the reference PGD and the sanity checks, on the trained
default target and real digits."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ipg_gnn.attacks import ReferencePGD, robust_accuracy, sanity_checks, seed_attack_rng
from ipg_gnn.attacks.reference import margin_loss
from ipg_gnn.targets import predict
from tests.conftest import ROOT, compose_config

EPS = 0.05  # small enough that the default MLP keeps a fair share of inputs robust


def robust_eval(level: str, eps: float = EPS) -> dict:
    cfg = compose_config("train", ROOT, [f"+robust_eval={level}", f"dataset.eps={eps}"])
    return {name: instantiate(c, name=name) for name, c in cfg.robust_eval.attacks.items()}


def weakest_first(attacks: dict) -> dict:
    """Square first, with fewer queries (for speed): on this model it is the weakest, so the
    later attacks must add to it and a report that kept only one attack's result would show."""
    return {"square": attacks.pop("square").with_params(max_iter=100), **attacks}


@pytest.fixture(scope="module")
def batch(trained_default):
    images = trained_default["splits"].images(trained_default["data"], "test")
    return images.subset(range(0, 600, 5))


@pytest.fixture(scope="module")
def quick(trained_default, batch):
    attacks = weakest_first(robust_eval("quick"))
    return robust_accuracy(trained_default["model"], batch.x, batch.y, attacks)


def test_robust_accuracy_is_the_per_input_and_of_every_attack(trained_default, batch):
    model, attacks = trained_default["model"], weakest_first(robust_eval("quick"))
    report = robust_accuracy(model, batch.x, batch.y, attacks, seed=1, cascade=False)
    correct = predict(model, batch.x) == batch.y
    by_hand = correct.clone()
    for name, attack in attacks.items():
        seed_attack_rng(1)
        held = predict(model, attack(model, batch.x[correct], batch.y[correct]).x_adv)
        resists = correct.clone()
        resists[correct] = held == batch.y[correct]
        assert report.attack_acc[name] == pytest.approx(float(resists.float().mean()))
        by_hand &= resists
    assert torch.equal(report.robust, by_hand)
    assert report.robust_acc == int(by_hand.sum()) / len(batch)
    assert report.robust_acc <= min(report.attack_acc.values())
    assert report.robust_acc < report.attack_acc["square"], "the AND must matter on this data"


def test_cascade_reports_cumulative_accuracy_and_valid_examples(trained_default, batch, quick):
    model = trained_default["model"]
    cumulative = list(quick.attack_acc.values())
    assert cumulative == sorted(cumulative, reverse=True) and cumulative[-1] == quick.robust_acc
    assert cumulative[0] > quick.robust_acc, "the attacks after Square broke more inputs"
    assert 0.2 < quick.robust_acc < quick.clean_acc, quick.summary()
    assert (quick.x_adv - batch.x).abs().max() <= EPS + 1e-5
    assert 0 <= float(quick.x_adv.min()) and float(quick.x_adv.max()) <= 1
    fooled = predict(model, quick.x_adv) != batch.y
    assert torch.equal(fooled, ~quick.robust)
    assert {quick.broken_by[i] for i in quick.robust.nonzero().squeeze(1).tolist()} == {None}
    assert set(quick.broken_by) <= {None, "clean", *quick.attack_acc}


def test_robust_accuracy_is_seeded(trained_default, batch, quick):
    attacks = weakest_first(robust_eval("quick"))
    again = robust_accuracy(trained_default["model"], batch.x, batch.y, attacks)
    assert torch.equal(again.robust, quick.robust) and torch.equal(again.x_adv, quick.x_adv)


def test_reference_pgd_finds_little_the_quick_ensemble_missed(trained_default, batch, quick):
    model = trained_default["model"]
    reference = ReferencePGD(eps=EPS, eps_step=EPS / 10, steps=50, restarts=2)(
        model, batch.x, batch.y
    )
    robust = ~reference.success
    assert (reference.x_adv - batch.x).abs().max() <= EPS + 1e-5
    assert torch.equal(reference.pred, predict(model, reference.x_adv))
    assert float(robust.float().mean()) < quick.clean_acc - 0.2, "the reference is an attack"
    missed = int((quick.robust & ~robust).sum())
    assert missed <= 2, f"the reference broke {missed} inputs the quick ensemble did not"


def test_margin_loss_is_best_other_logit_minus_true_one():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
    assert torch.equal(margin_loss(logits, torch.tensor([1, 2])), torch.tensor([-1.0, 6.0]))
    with pytest.raises(ValueError, match="unknown losses"):
        ReferencePGD(eps=0.1, eps_step=0.01, losses=("hinge",))


class Rounded(nn.Module):
    """The MLP behind a hard rounding of its input: zero gradients, i.e. masked ones."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x))


def run_sanity(model: nn.Module, batch) -> dict:
    attacks = robust_eval("quick", eps=0.15)
    small = batch.subset(range(60))
    return sanity_checks(
        model,
        small.x,
        small.y,
        gradient=attacks["apgd_ce"],
        gradient_free=attacks["square"].with_params(max_iter=200),
        eps_grid=(0.05, 0.15, 0.4),
        iter_grid=(5, 25),
    )


def test_sanity_checks_pass_on_the_plain_mlp(trained_default, batch):
    result = run_sanity(trained_default["model"], batch)
    assert result["passed"], result
    assert result["acc_by_eps"][-1] <= 0.05 and result["clean_acc"] > 0.8


def test_sanity_checks_flag_masked_gradients(trained_default, batch):
    result = run_sanity(Rounded(trained_default["model"]), batch)
    assert not result["checks"]["near_zero_at_large_eps"], result
    assert not result["checks"]["gradient_free_not_stronger"], result
    assert not result["passed"]


def test_every_evaluation_flags_a_gradient_free_attack_beating_the_gradient_ones(
    trained_default, batch
):
    from ipg_gnn.objectives import Robustness

    attacks = robust_eval("quick", eps=0.4)
    chosen = {"apgd_ce": attacks["apgd_ce"], "square": attacks["square"].with_params(max_iter=200)}
    assert chosen["apgd_ce"].uses_gradients and not chosen["square"].uses_gradients
    objective = Robustness(chosen)
    small = batch.subset(range(60))
    masked, _ = objective.evaluate(Rounded(trained_default["model"]), small, 100, seed=0)
    plain, _ = objective.evaluate(trained_default["model"], small, 100, seed=0)
    assert masked["gradient_masking"] and not plain["gradient_masking"], (masked, plain)
    assert "(masking?)" in objective.columns(masked)["robust"]


def test_every_full_evaluation_runs_the_sanity_checks_and_reports_a_failure(trained_default, batch):
    from ipg_gnn.objectives import Robustness

    attacks = robust_eval("quick", eps=0.15)
    ensemble = {
        "apgd_ce": attacks["apgd_ce"],
        "square": attacks["square"].with_params(max_iter=200),
    }
    sanity = {"n": 40, "gradient": "apgd_ce", "gradient_free": "square",
              "eps_grid": [0.05, 0.15, 0.4], "iter_grid": [5, 25]}  # fmt: skip
    objective = Robustness({"fgsm": attacks["apgd_ce"]}, ensemble=ensemble, sanity=sanity)
    small = batch.subset(range(40))
    plain, _ = objective.evaluate(trained_default["model"], small, 100, seed=0)
    masked, _ = objective.evaluate(Rounded(trained_default["model"]), small, 100, seed=0)
    assert plain["sanity"]["n"] == 40 and plain["sanity"]["eps"] == [0.05, 0.15, 0.4]
    assert objective.columns(plain)["sanity"] == "ok", plain["sanity"]
    cell = objective.columns(masked)["sanity"]
    assert cell.startswith("fails ") and "near_zero_at_large_eps" in cell, masked["sanity"]
    # Validation evaluations (a subset of the attacks) skip it; a bad attack name is refused.
    part, _ = objective.evaluate(trained_default["model"], small, 100, seed=0, only=["fgsm"])
    assert "sanity" not in part
    with pytest.raises(ValueError, match="objective.sanity.gradient='pgd' is not an attack"):
        Robustness({}, ensemble=ensemble, sanity={**sanity, "gradient": "pgd"})
