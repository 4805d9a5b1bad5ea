"""Attacks: real ART attacks against the trained default target."""

from __future__ import annotations

import functools

import pytest
import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

from ipg_gnn.attacks import Attack, seed_attack_rng
from ipg_gnn.objectives import Robustness
from ipg_gnn.targets import accuracy, predict
from tests.conftest import ROOT, compose_config


def pgd(eps: float) -> Attack:
    return Attack(
        "pgd",
        functools.partial(
            ProjectedGradientDescent, norm="inf", eps=eps, eps_step=0.01, max_iter=20, verbose=False
        ),
        batch_size=128,
        progress=False,
    )


@pytest.fixture(scope="module")
def test_images(trained_default):
    return (
        trained_default["splits"].images(trained_default["data"], "test").subset(range(0, 750, 3))
    )


def test_pgd_eps_0_1_drops_accuracy_below_30_percent(trained_default, test_images):
    model = trained_default["model"]
    result = pgd(0.1)(model, test_images.x, test_images.y)
    adv_acc = float((result.pred == test_images.y).float().mean())
    assert accuracy(model, test_images) > 0.85 and adv_acc < 0.30, adv_acc
    assert (result.x_adv - test_images.x).abs().max() <= 0.1 + 1e-6
    assert 0.0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1.0
    assert torch.equal(result.pred, predict(model, result.x_adv))
    right_before = predict(model, test_images.x) == test_images.y
    assert torch.equal(result.success, right_before & (result.pred != test_images.y))


def test_eps_zero_changes_nothing(trained_default, test_images):
    model = trained_default["model"]
    result = pgd(0.0)(model, test_images.x, test_images.y)
    assert torch.equal(result.x_adv, test_images.x)
    assert torch.equal(result.pred, predict(model, test_images.x))
    assert not result.success.any()  # inputs the model already gets wrong are no successes


def test_attack_reports_eps_and_rejects_bad_input(trained_default, test_images):
    fgsm = Attack("fgsm", functools.partial(FastGradientMethod, eps=0.2), progress=False)
    assert fgsm.eps == 0.2
    with pytest.raises(ValueError, match="empty"):
        fgsm(trained_default["model"], test_images.x[:0], test_images.y[:0])
    with pytest.raises(ValueError, match="samples"):
        fgsm(trained_default["model"], test_images.x[:4], test_images.y[:3])


ATTACK_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "attack").glob("*.yaml"))
ATTACKS = [a for a in ATTACK_CONFIGS if a not in ("all", "default", "eval")]


@pytest.mark.parametrize("name", ATTACKS)
def test_every_configured_attack_runs_and_fools_the_model(name, trained_default, test_images):
    cfg = compose_config("train", ROOT, [f"attack={name}"])
    attack = Robustness(cfg.attack).attacks[name]
    attack.progress = False
    batch = test_images.subset(range(24))
    result = attack(trained_default["model"], batch.x, batch.y)
    clean = accuracy(trained_default["model"], batch)
    adv = float((result.pred == batch.y).float().mean())
    assert result.x_adv.shape == batch.x.shape and adv < clean - 0.3, (name, clean, adv)
    if attack.eps is not None and name != "pgd_l2":
        assert (result.x_adv - batch.x).abs().max() <= attack.eps + 1e-5


def test_seeded_evaluation_is_reproducible(trained_default, test_images):
    objective = Robustness({"pgd": pgd(0.05)})
    model = trained_default["model"]
    first, _ = objective.evaluate(model, test_images, batch_size=100, seed=3)
    again, _ = objective.evaluate(model, test_images, batch_size=100, seed=3)
    assert first == again and 0 < first["adv_acc"]["pgd"] < first["clean_acc"]


def test_robust_accuracy_is_the_per_input_and_over_attacks_and_ensemble(trained_default):
    from ipg_gnn.attacks import robust_accuracy

    model = trained_default["model"]
    images = trained_default["splits"].images(trained_default["data"], "test").subset(range(60))
    attacks = {"fgsm": pgd(0.05).with_params(max_iter=1), "pgd": pgd(0.05)}
    ensemble = {"pgd_strong": pgd(0.08)}
    report, _ = Robustness(attacks, ensemble=ensemble).evaluate(model, images, 100, seed=4)
    by_hand = predict(model, images.x) == images.y
    for attack in attacks.values():
        seed_attack_rng(4)
        by_hand &= attack(model, images.x, images.y).pred == images.y
    survivors = by_hand.nonzero().flatten()
    by_hand[survivors] = robust_accuracy(
        model, images.x[survivors], images.y[survivors], ensemble, seed=4
    ).robust
    assert report["robust_acc"] == pytest.approx(float(by_hand.float().mean()))
    assert report["robust_acc"] < min(report["adv_acc"].values())  # the ensemble adds to it
    assert report["ensemble"]["attacked"] == len(survivors)
