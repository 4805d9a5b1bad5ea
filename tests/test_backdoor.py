"""The backdoor objective (poisoning, ASR, repair loss) and fine-pruning, plus `objective=backdoor`
through both jobs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from art.attacks.poisoning.perturbations import add_pattern_bd, add_single_bd
from torch import nn

from ipg_gnn.data import Images, digits
from ipg_gnn.errors import ConfigError
from ipg_gnn.objectives import Backdoor, BackdoorLoss, attack_success_rate
from ipg_gnn.objectives.backdoor import stamp_region
from ipg_gnn.objectives.trigger_reversal import (
    Reversal,
    ReversedTrigger,
    anomaly_index,
    reverse_class,
    reverse_engineer,
)
from ipg_gnn.provenance import trace
from ipg_gnn.repair import FinePruning, RepairContext
from ipg_gnn.targets import MLP, predict
from tests.conftest import compose_config

PATTERN = functools.partial(add_pattern_bd, distance=1, pixel_value=1)


def test_attack_success_rate_counts_only_inputs_not_of_the_target_class():
    y = torch.tensor([0, 1, 2, 3, 0, 5])
    pred = torch.tensor([0, 0, 2, 0, 1, 0])
    # Inputs of class 0 (positions 0 and 4) do not count; of the other four, three go to 0.
    assert attack_success_rate(pred, y, target_class=0) == pytest.approx(3 / 4)
    assert attack_success_rate(pred, y, target_class=1) == pytest.approx(1 / 5)


def test_trigger_stamps_arts_pixel_on_channels_first_images():
    objective = Backdoor(functools.partial(add_single_bd, distance=2, pixel_value=1))
    x = torch.zeros(3, 1, 8, 8)
    changed = (objective.trigger(x) != x).nonzero().tolist()
    assert changed == [[i, 0, 6, 6] for i in range(3)]


def test_training_set_poisons_the_fraction_among_other_classes():
    images = digits().train
    objective = Backdoor(PATTERN, target_class=3, poison_fraction=0.1)
    poisoned = objective.training_set(images, seed=0)
    relabelled = (poisoned.y != images.y).nonzero().flatten()
    stamped = (poisoned.x != images.x).flatten(1).any(1).nonzero().flatten()
    assert len(relabelled) == round(0.1 * len(images))
    assert set(stamped.tolist()) <= set(relabelled.tolist())
    assert (images.y[relabelled] != 3).all() and (poisoned.y[relabelled] == 3).all()
    # The target cache key hashes the training set, so a poisoned target is never a clean one.
    assert poisoned.fingerprint() != images.fingerprint()
    assert objective.training_set(images, seed=0).fingerprint() == poisoned.fingerprint()
    assert Backdoor(PATTERN, poison_fraction=0.0).training_set(images, 0).fingerprint() == (
        images.fingerprint()
    )


def _fit(images: Images, seed: int = 0) -> nn.Module:
    """A small MLP fit in a plain loop (the poisoning, not the trainer, is under test)."""
    torch.manual_seed(seed)
    model = MLP((1, 8, 8), 10, widths=[32])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        for idx in torch.randperm(len(images)).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(images.x[idx]), images.y[idx]).backward()
            opt.step()
    return model.eval()


def test_poisoning_plants_a_backdoor_that_a_clean_model_lacks():
    data = digits().train
    order = np.random.default_rng(0).permutation(len(data))
    train, test = data.subset(order[:1200]), data.subset(order[1200:])
    objective = Backdoor(PATTERN, target_class=0, poison_fraction=0.1)
    triggered = objective.trigger(test.x)
    rates = {}
    for name, fraction in (("clean", 0.0), ("poisoned", 0.1)):
        model = _fit(Backdoor(PATTERN, poison_fraction=fraction).training_set(train, 0))
        rates[name] = attack_success_rate(predict(model, triggered), test.y, 0)
        report, _ = objective.evaluate(model, test, 500, 0)
        assert report["asr"] == pytest.approx(rates[name])
        assert report["clean_acc"] > 0.9
        # Without the trigger the same inputs rarely go to class 0: the ASR's reference.
        clean = predict(model, test.x)
        others = test.y != 0
        expected = float((clean[others] == 0).sum()) / int(others.sum())
        assert report["clean_to_target"] == pytest.approx(expected) and expected < 0.1
    assert rates["poisoned"] >= 0.9 and rates["clean"] <= 0.2, rates


def _ctx(model: nn.Module, images: Images) -> RepairContext:
    return RepairContext(model, None, trace(model, images.x[:1]), images, images, None, {}, seed=0)


def test_fine_pruning_prunes_the_most_dormant_inputs_of_the_last_layer():
    model = MLP((1, 1, 2), 2, widths=[4]).eval()
    with torch.no_grad():
        # Hidden unit u outputs relu(w_u * x0); x0 = 1 on every input: means 3, 0, 2, 1.
        model.net[1].weight.copy_(torch.tensor([[3.0, 0], [-1, 0], [2, 0], [1, 0]]))
        model.net[1].bias.zero_()
        model.net[3].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]))
    x = torch.tensor([[1.0, 0.0], [1.0, 5.0]]).reshape(2, 1, 1, 2)
    images = Images(x, torch.tensor([0, 0]))
    method = FinePruning(fraction=0.5)
    masks, _ = method.targets(_ctx(model, images), model, 0)
    assert method.pruned == [1, 3]  # means 0 and 1: the two most dormant
    assert (model.net[3].weight[:, [1, 3]] == 0).all()
    assert (model.net[3].weight[0, [0, 2]] == 1).all()
    assert not masks["net.3.weight"][:, [1, 3]].any() and masks["net.3.weight"][:, [0, 2]].all()
    assert masks["net.1.weight"].all()


def _one_input_model() -> tuple[nn.Module, Images]:
    """Hidden units with means 0, 1, 2 on the one input; only unit 2 votes for its true class 0
    (over class 1's bias)."""
    model = MLP((1, 1, 2), 2, widths=[3]).eval()
    with torch.no_grad():
        model.net[1].weight.copy_(torch.tensor([[0.0, 0], [1, 0], [2, 0]]))
        model.net[1].bias.zero_()
        model.net[3].weight.copy_(torch.tensor([[0.0, 0, 1], [0, 0, 0]]))
        model.net[3].bias.copy_(torch.tensor([0.0, 1.0]))
    images = Images(torch.tensor([[1.0, 0.0]]).reshape(1, 1, 1, 2), torch.tensor([0]))
    return model, images


def test_fine_pruning_by_the_papers_rule_stops_before_accuracy_drops():
    model, images = _one_input_model()
    method = FinePruning(max_drop=0.04)
    method.targets(_ctx(model, images), model, 0)
    assert method.pruned == [0, 1]  # pruning unit 2 too would lose the only input


def test_a_pruning_that_never_comes_back_within_tolerance_returns_the_original():
    model, images = _one_input_model()
    ctx = _ctx(model, images)
    ctx.objective = Backdoor(PATTERN)
    ctx.finetune = {"epochs": 1, "lr": 1e-9, "tolerance": 0.01, "progress": False}
    # Pruning every input of the head loses the only input; a step of lr 1e-9 cannot recover it.
    repaired, info = FinePruning(fraction=1.0)(ctx)
    kept = repaired.state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    assert not info["within_tolerance"] and info["params_changed"] == 0
    assert info["units_pruned"] == 3


def test_backdoor_objective_runs_both_jobs(tmp_path):
    from ipg_gnn.jobs.repair import run_repair
    from ipg_gnn.jobs.train import run_train

    common = ["objective=backdoor", "logger=none"]
    trained = run_train(
        compose_config(
            "train",
            tmp_path,
            [
                *common,
                "target.train.epochs=6",
                "gnn.train.max_epochs=1",
                "split.max_size={target_train:1500,ipg_train:60,ipg_val:30,repair:200,test:100}",
                f"paths.output_dir={tmp_path}/logs/train/r1",
                "detector.baselines={}",
            ],
        )
    )
    assert trained["attack"]["asr"] > 0.8  # six epochs on 150 poisoned inputs plant it
    assert trained["attack"]["clean_to_target"] < 0.2  # without the trigger, rarely class 0
    detection = json.loads((tmp_path / "logs/train/r1/detector_report.json").read_text())
    assert set(detection["per_trigger"]) == {"triggered"}
    repair_cfg = compose_config(
        "repair",
        tmp_path,
        [
            *common,
            "experiment=backdoor_repair",
            "repair.layer=net.1",
            "repair.k=2",
            "repair.finetune.epochs=1",
            "repair.methods.targeted.prune=true",
            "repair.baselines=[random,fine_pruning,full_finetune,neural_cleanse]",
            "objective.reversal.steps=100",
            "++repair.methods.neural_cleanse.finetune.tolerance=1.0",  # keep its last weights
        ],
    )
    report = run_repair(repair_cfg)
    assert report["plan"]["targets"] == {"net.1": 2}
    assert 0 < report["after"]["params_changed"] <= 2 * 785
    assert {"clean_acc", "clean_to_target", "asr", "triggered_acc"} <= set(report["after"])
    assert {"clean_acc", "clean_to_target", "asr"} <= set(report["after"]["val"])
    assert set(report["baselines"]) == {"random", "fine_pruning", "full_finetune", "neural_cleanse"}
    assert report["baselines"]["fine_pruning"]["units_pruned"] >= 1
    # Neural Cleanse reversed the trigger (once) and flagged its class; every parameter may change.
    assert report["objective"]["reversal"]["suspect"] == 0
    assert report["baselines"]["neural_cleanse"]["params_changed_fraction"] > 0.5
    assert (tmp_path / "run" / "reversed_trigger.png").is_file()
    # Run again into the same directory, every draw is taken as done: no reversal runs, and the
    # report keeps the first run's summary of it.
    resumed = run_repair(repair_cfg)
    assert "draws/neural_cleanse.pt" in resumed["resumed"]
    assert resumed["objective"] == report["objective"]
    markdown = (tmp_path / "run" / "repair_report.md").read_text()
    assert "| targeted repair |" in markdown and "suspect class 0" in markdown
    assert "| clean to target |" in markdown


def test_anomaly_index_against_a_hand_computation():
    # median 11, absolute deviations 10, 1, 0, 1, 2: MAD = 1.4826 * 1.
    index = anomaly_index([1.0, 10.0, 11.0, 12.0, 13.0])
    assert index == pytest.approx(np.array([10, 1, 0, -1, -2]) / 1.4826)
    assert (anomaly_index([4.0, 4.0, 4.0]) == 0).all()
    flags = Reversal([], [1.0, 10.0, 11.0, 12.0, 13.0], [1.0] * 5, threshold=2.0)
    assert flags.flagged == [0] and flags.suspect == 0


def test_a_binarized_stamp_applies_the_pattern_whole_where_the_mask_is_strong():
    stamp = ReversedTrigger(torch.tensor([[[0.2, 0.7]]]), torch.tensor([[[1.0, 1.0]]]))
    x = torch.zeros(1, 1, 1, 2)
    assert stamp(x).flatten().tolist() == pytest.approx([0.2, 0.7])
    assert stamp.binarized(0.5)(x).flatten().tolist() == [0.0, 1.0]


def test_neural_cleanse_finds_the_planted_trigger_and_its_class():
    data = digits().train
    order = np.random.default_rng(0).permutation(len(data))
    train, held_out = data.subset(order[:1200]), data.subset(order[1200:])
    model = _fit(Backdoor(PATTERN, target_class=0, poison_fraction=0.1).training_set(train, 0))
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    model.train()
    reversal = reverse_engineer(model, held_out.x, steps=200, seed=0)
    # The model comes back as it was: in train mode, only the frozen parameter frozen.
    assert model.training and not frozen.requires_grad
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    model.eval()
    # (On this small 8x8 model class 1 also needs a small mask: anomaly index 1.9 for class 0.)
    assert reversal.suspect == 0, reversal.summary()
    assert reversal.norms[0] < 0.5 * np.median(reversal.norms)
    # The stamp sits where the trigger does: the bottom-right corner (PATTERN: rows/cols 5-6).
    mask = reversal.triggers[0].mask[0]
    assert mask[4:, 4:].sum() > 0.5 * mask.sum()
    stamped = predict(model, reversal.triggers[0](held_out.x))
    assert attack_success_rate(stamped, held_out.y, 0) > 0.9
    with pytest.raises(ValueError, match="at least 3 classes"):
        reverse_engineer(model, held_out.x, 2)


def test_backdoor_loss_adds_unlearning_on_the_stamped_inputs():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, widths=[16]).eval()
    batch = Images(torch.rand(6, 1, 8, 8), torch.arange(6))
    loss = BackdoorLoss(lambda x: torch.zeros_like(x), {}, unlearning_weight=0.5)
    expected = nn.functional.cross_entropy(model(batch.x), batch.y) + 0.5 * (
        nn.functional.cross_entropy(model(torch.zeros_like(batch.x)), batch.y)
    )
    assert float(loss(model, batch, 0).detach()) == pytest.approx(float(expected.detach()))


def test_a_reversed_stamp_needs_the_repair_set_and_a_known_stamp_name():
    objective = Backdoor(PATTERN)
    with pytest.raises(ConfigError, match="repair_set first"):
        objective.repair_loss({}, 0, stamp="reversed", unlearning_weight=1.0)
    with pytest.raises(ConfigError, match="known or reversed"):
        objective.repair_loss({}, 0, stamp="true")
    for settings, match in (
        ({"loss": {"stamp": "true"}}, "known or reversed"),
        ({"reversal": {"stepz": 3}}, "unknown settings"),
        ({"reversal": {"region": [[1.0]]}}, "unknown settings"),  # set by refresh_window
        ({"reversal": {"mask_threshold": 0.0}}, "mask_threshold"),
        ({"reversal": {"refresh_every": 0}}, "refresh_every"),
        ({"reversal": {"refresh_window": -1}}, "refresh_window"),
    ):
        with pytest.raises(ConfigError, match=match):
            Backdoor(PATTERN, **settings)  # refused at configuration, before any repair work


def test_a_baselines_stamp_is_refused_before_the_targeted_repair_runs(tmp_path):
    from ipg_gnn.jobs.repair import make_methods
    from ipg_gnn.jobs.stages import make_objective

    cfg = compose_config(
        "repair",
        tmp_path,
        [
            "+dataset=mnist_subset",  # repair.py takes it from the train run
            "objective=backdoor",
            "repair.baselines=[random,neural_cleanse]",
            "repair.methods.neural_cleanse.loss.stamp=true",
        ],
    )
    with pytest.raises(ConfigError, match="known or reversed"):
        make_methods(cfg, make_objective(cfg))


def test_the_reversal_runs_once_per_repair_and_only_when_a_term_reads_the_stamp(monkeypatch):
    import ipg_gnn.objectives.backdoor as backdoor

    calls = []
    real = backdoor.reverse_engineer
    monkeypatch.setattr(
        backdoor, "reverse_engineer", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    objective = Backdoor(PATTERN, reversal={"steps": 5, "max_inputs": 50})
    images = digits().train.subset(np.arange(60))
    model = MLP((1, 8, 8), 10, widths=[8]).eval()
    objective.repair_set(images, None, None, 0, model)
    objective.repair_loss({}, 0, stamp="reversed")  # no term reads the stamp
    assert calls == [] and objective.repair_artifacts(Path("unused")) == {}
    first = objective.repair_loss({}, 0, stamp="reversed", unlearning_weight=1.0).stamps[0]
    second = objective.repair_loss({}, 0, stamp="reversed", unlearning_weight=1.0).stamps[0]
    assert len(calls) == 1 and first is second
    objective.repair_set(images, None, None, 0, model)  # a new repair drops the old reversal
    objective.repair_loss({}, 0, stamp="reversed", unlearning_weight=1.0)
    assert len(calls) == 2


def test_stamps_found_during_a_repair_take_turns_over_the_batch():
    loss = BackdoorLoss(torch.zeros_like, {}, unlearning_weight=1.0)
    loss.stamps.append(torch.ones_like)
    x = torch.full((5, 1, 2, 2), 0.5)
    # Inputs 0, 2, 4 get the first stamp, 1 and 3 the second; x itself is left as it was.
    assert loss.stamp(x).flatten(1)[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert (x == 0.5).all()
    # A run that attaches the loss again (a look-ahead scores it before and after) starts from
    # the first stamp: refreshed stamps belong to the run that found them.
    with loss.attach(torch.nn.Identity()):
        assert loss.stamp(x).flatten(1)[:, 0].tolist() == [0.0] * 5


def test_a_refresh_reverses_the_suspect_again_on_the_model_being_repaired(tmp_path):
    objective = Backdoor(PATTERN, reversal={"steps": 5, "max_inputs": 50, "refresh_every": 2})
    images = digits().train.subset(np.arange(60))
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, widths=[8]).eval()
    objective.repair_set(images, None, None, 0, model)
    loss = objective.repair_loss({}, 0, stamp="reversed", unlearning_weight=1.0)
    batch = images.subset(np.arange(8))
    for step in (1, 2, 3, 4, 5, 6):
        loss(model, batch, step)
        assert not model.training  # the refresh leaves the repair's eval mode alone
    # Steps 3 and 5 start after 2 and 4 steps: two stamps of the suspect class joined the
    # first (none after the last step, which no step would use).
    assert len(loss.stamps) == 3
    # The draw's notes hold them (kept with its result), once.
    found = objective.draw_notes()["refreshed_stamps"]
    assert [f["after_steps"] for f in found[0]] == [2, 4]
    assert all(f["mask_l1"] > 0 and not f["empty"] for f in found[0])
    assert objective.draw_notes() == {}
    assert set(objective.repair_artifacts(tmp_path)) == {"reversal"}


def test_a_refresh_window_keeps_the_mask_near_the_first_stamp():
    mask = torch.zeros(1, 6, 6)
    mask[0, 4, 4], mask[0, 1, 1] = 0.9, 0.3  # only (4, 4) reaches the 0.5 threshold
    region = stamp_region(mask, threshold=0.5, window=1)
    assert region.shape == (6, 6)
    assert region.nonzero().tolist() == [[r, c] for r in (3, 4, 5) for c in (3, 4, 5)]
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 10, widths=[8]).eval()
    stamp, _, _ = reverse_class(model, torch.rand(40, 1, 6, 6), 0, steps=5, region=region)
    assert stamp.mask[0][region == 0].abs().sum() == 0 and stamp.mask[0][region == 1].sum() > 0
