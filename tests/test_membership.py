"""objective=membership: populations, attack scores and metrics, and the audit end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ipg_gnn.data import Images
from ipg_gnn.detect.metrics import attack_metrics, fit_threshold
from ipg_gnn.errors import ConfigError
from ipg_gnn.objectives import Membership, Selection
from ipg_gnn.objectives.membership import (
    MEMBER,
    POSITION,
    PrivacyLoss,
    attack_scores,
    lira_offline,
    logit_confidence,
    logits_of,
)
from ipg_gnn.repair.report import model_result
from tests.conftest import compose_config


def _split_inputs(sizes: dict[str, int]):
    """Generated splits: split `s` holds `sizes[s]` inputs with dataset indices `base + i`."""
    selections = {}
    for i, (split, n) in enumerate(sizes.items()):
        images = Images(torch.rand(n, 1, 1, 3), torch.arange(n) % 2)
        selections[split] = Selection(images, np.arange(n) + 1000 * i)
    return selections.__getitem__


def test_members_are_disjoint_parts_of_target_train_and_balanced():
    inputs = _split_inputs({"target_train": 200, "ipg_train": 500, "ipg_val": 20, "test": 300})
    objective = Membership({"ipg_train": 0.45, "ipg_val": 0.15, "test": 0.4}, seed=3)
    member, nonmember = objective.contrasts()["member"], objective.reference_population()
    assert not member.paired and not nonmember.paired
    train_index = set(inputs("target_train").source_index)
    seen: set[int] = set()
    for split, expected in (("ipg_train", 90), ("ipg_val", 20), ("test", 80)):
        m, n = member.select(split, inputs), nonmember.select(split, inputs)
        # Balanced; ipg_val's own 20 inputs cap its 30-member part.
        assert len(m.source_index) == len(n.source_index) == expected
        assert set(m.source_index) <= train_index
        assert set(n.source_index) <= set(inputs(split).source_index)
        assert not seen & set(m.source_index)
        seen |= set(m.source_index)
        # The images are those of the indices drawn.
        assert torch.equal(m.images.x, inputs("target_train").images.x[m.source_index])
    # Another seed draws other members; the same seed the same ones.
    again = Membership({"ipg_train": 0.45, "ipg_val": 0.15, "test": 0.4}, seed=3)
    other = Membership({"ipg_train": 0.45, "ipg_val": 0.15, "test": 0.4}, seed=4)
    first = member.select("test", inputs).source_index
    assert np.array_equal(first, again.contrasts()["member"].select("test", inputs).source_index)
    assert not np.array_equal(
        first, other.contrasts()["member"].select("test", inputs).source_index
    )
    with pytest.raises(ConfigError, match="no fraction for split 'repair'"):
        member.select("repair", inputs)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"parts": {"ipg_train": 0.6, "test": 0.6}}, "at most 1"),
        ({"parts": {"target_train": 0.5}}, "names splits"),
        ({"parts": {"test": 0.5}, "lira": {"shadows": 1}}, "shadows must be >= 2"),
        ({"parts": {"test": 0.5}, "lira": {"split": "test"}}, "other than the audited"),
        ({"parts": {"test": 0.5}, "lira": {"split": "target_train"}}, "other than the audited"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        Membership(seed=0, **settings)


def test_metrics_equal_a_hand_computation():
    member = torch.tensor([0.9, 0.8, 0.5, 0.2], dtype=torch.float64)
    nonmember = torch.tensor([0.1, 0.2, 0.3, 0.7], dtype=torch.float64)
    scores, labels = torch.cat([nonmember, member]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    m = attack_metrics(scores, labels, threshold=0.5)
    # Member-above-non-member pairs: 4 + 4 + 3 + 1 + a tie (0.2, 0.2) of 16.
    assert m["auc"] == pytest.approx(12.5 / 16)
    # At threshold 0.5: 3 of 4 members and 3 of 4 non-members right.
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    # No false positive allowed at 0.1% or 1% of 4 non-members: members above 0.7 only.
    assert m["tpr_at_0.001fpr"] == m["tpr_at_0.01fpr"] == pytest.approx(0.5)
    assert (m["n_members"], m["n_nonmembers"]) == (4, 4)
    # The fitted threshold is one of best balanced accuracy (TPR - FPR = 1/2, e.g. at 0.8).
    t = fit_threshold(scores, labels)
    assert attack_metrics(scores, labels, t)["balanced_accuracy"] == pytest.approx(0.75)


def test_scores_and_lira_equal_their_formulas():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    p = logits.softmax(1)[torch.arange(2), y]
    assert torch.allclose(logit_confidence(logits, y), torch.log(p / (1 - p)))
    s = attack_scores(logits, y)
    assert torch.allclose(s["loss"], p.log()) and torch.allclose(s["confidence"], p)
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    assert torch.allclose(s["entropy"], -entropy)
    # Losses below float32's resolution near 0 stay apart (log_softmax would tie them at 0).
    confident = torch.tensor([[30.0, 0.0], [40.0, 0.0]])
    loss = attack_scores(confident, torch.tensor([0, 0]))["loss"]
    assert loss[1] > loss[0] and loss[0] == pytest.approx(-math.exp(-30), rel=1e-6)
    shadow = torch.tensor([[0.0, 1.0], [2.0, 5.0]])  # OUT means 1, 3; spreads sqrt(2), sqrt(8)
    target = torch.tensor([1.0 + math.sqrt(2), 3.0])
    assert torch.allclose(lira_offline(target, shadow), torch.tensor([1.0, 0.0]))
    # One spread for all: the root mean variance, sqrt((2 + 8) / 2).
    assert torch.allclose(
        lira_offline(target, shadow, global_variance=True),
        torch.tensor([math.sqrt(2) / math.sqrt(5), 0.0]),
    )
    with pytest.raises(ConfigError, match="at least 2 shadow"):
        lira_offline(target, shadow[:1])


def test_privacy_loss_equals_a_hand_computation():
    """CE on held-out inputs + distillation of members toward their soft targets + the
    activation moment gap of the repaired units, on a batch of 2 members and 2 others."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    x = torch.randn(4, 1, 1, 3)
    y = torch.tensor([0, 1, 1, 0])
    member = torch.tensor([1, 0, 1, 0])
    position = torch.tensor([0, 5, 1, 6])  # members' rows of the soft targets
    soft = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    batch = Images(x, y, {MEMBER: member, POSITION: position})
    loss = PrivacyLoss(
        {"1": [0, 2]}, soft, ce_weight=2.0, distill_weight=3.0, activation_weight=5.0
    )
    with loss.attach(model):
        value = loss(model, batch, step=0)
    logits = model(x)
    hidden = model[1](x.flatten(1))[:, [0, 2]]
    ce = torch.nn.functional.cross_entropy(logits[[1, 3]], y[[1, 3]])
    distill = -(soft * logits[[0, 2]].log_softmax(1)).sum(1).mean()
    m, o = hidden[[0, 2]], hidden[[1, 3]]
    gap = ((m.mean(0) - o.mean(0)) ** 2 + (m.std(0) - o.std(0)) ** 2).mean()
    assert torch.allclose(value, 2 * ce + 3 * distill + 5 * gap)
    with pytest.raises(ConfigError, match="members marked"):
        loss(model, Images(x, y), step=0)


def test_repair_set_holds_every_member_and_as_many_held_out_inputs():
    inputs = _split_inputs({"target_train": 30, "repair": 100})
    objective = Membership({"test": 0.5}, seed=0, references=2)
    with pytest.raises(ConfigError, match="repair_set first"):
        objective.repair_loss({}, seed=0)
    fine_tune = inputs("repair").images
    seeds = []

    def fit(images: Images, seed: int) -> torch.nn.Module:
        """A 'reference model' whose logits are the inputs' three features."""
        assert len(images) == 30  # as many as the target's training inputs
        seeds.append(seed)
        identity = torch.nn.Linear(3, 3)
        with torch.no_grad():
            identity.weight.copy_(torch.eye(3))
            identity.bias.zero_()
        return torch.nn.Sequential(torch.nn.Flatten(), identity).eval()

    repair_set = objective.repair_set(fine_tune, inputs, fit, seed=0, model=torch.nn.Flatten())
    member = repair_set.groups[MEMBER]
    assert len(repair_set) == 60 and int(member.sum()) == 30
    members = inputs("target_train").images
    assert torch.equal(repair_set.x[member == 1], members.x)
    assert torch.equal(repair_set.groups[POSITION], torch.arange(60))
    assert len(set(seeds)) == 2  # two reference models, each its own seed
    # Soft targets: the mean of the reference models' distributions on each member.
    assert torch.allclose(objective.soft_targets, members.x.flatten(1).softmax(1))
    assert isinstance(objective.repair_loss({}, seed=0), PrivacyLoss)


def test_repair_audit_rows_name_models_as_the_report_does_and_average_draws():
    from ipg_gnn.tools.membership_audit import audit_row, draw_means

    def audited(member_acc: float, aucs: dict[str, float]) -> dict:
        attacks = {
            k: {"auc": v, "val_auc": 1 - v / 2, "tpr_at_0.01fpr": v / 10} for k, v in aucs.items()
        }
        return {
            "generalisation": {"member": {"accuracy": member_acc}, "nonmember": {"accuracy": 0.9}},
            "attacks": attacks,
        }

    report = {
        "after": {"params_changed_fraction": 0.04},
        "baselines": {"random": {"draws": [{"params_changed_fraction": 0.03}] * 2}},
    }
    rows = {
        "random_0": audit_row(
            audited(1.0, {"loss": 0.6, "lira": 0.7}), model_result(report, "random_0")
        ),
        "random_1": audit_row(
            audited(0.8, {"loss": 0.6, "lira": 0.5}), model_result(report, "random_1")
        ),
    }
    assert rows["random_0"]["strongest"] == "lira" and rows["random_1"]["strongest"] == "loss"
    # Validation's strongest attack is found on its own: here the weakest on test.
    assert rows["random_0"]["strongest_val_auc"] == pytest.approx(0.7)
    # The attack chosen on validation (loss: 0.7 against lira's 0.65) and its test AUC.
    assert rows["random_0"]["chosen_on_val"] == "loss"
    assert rows["random_0"]["chosen_on_val_auc"] == pytest.approx(0.6)
    mean = draw_means(rows)["random (mean of 2)"]
    # The mean of each draw's strongest AUC (0.7, 0.6), not the strongest of the mean AUCs.
    assert mean["strongest_auc"] == pytest.approx(0.65)
    assert mean["attacks"]["lira"]["auc"] == pytest.approx(0.6)
    assert mean["train_accuracy"] == pytest.approx(0.9)
    assert mean["params_changed_fraction"] == pytest.approx(0.03)
    assert draw_means({"dp_sgd": rows["random_0"], "original": rows["random_1"]}) == {}
    with pytest.raises(KeyError, match="no model 'random_2'"):
        model_result(report, "random_2")


def test_strongest_auc_gap_is_the_mean_of_each_models_strongest_auc_with_a_paired_bootstrap():
    from sklearn.metrics import roc_auc_score

    from ipg_gnn.tools.membership_audit import rank_auc, strongest_auc_gap

    rng = np.random.default_rng(0)
    is_member = np.repeat([1, 0], 400)
    tied = np.round(rng.normal(size=800) + 0.3 * is_member, 1)  # ties count half, as sklearn's
    assert rank_auc(tied, is_member) == pytest.approx(roc_auc_score(is_member, tied))

    def model(shift: float) -> dict[str, np.ndarray]:
        noise = {a: rng.normal(size=800) for a in ("loss", "lira")}
        return {
            "is_member": is_member,
            "loss": noise["loss"],
            "lira": noise["lira"] + shift * is_member,
        }

    scores = {"targeted": model(0.0), "random_0": model(1.0), "random_1": model(0.5)}
    gap = strongest_auc_gap(scores, "targeted", ["random_0", "random_1"], resamples=200)
    strongest = {
        m: max(roc_auc_score(is_member, s[a]) for a in ("loss", "lira")) for m, s in scores.items()
    }
    expected = (strongest["random_0"] + strongest["random_1"]) / 2 - strongest["targeted"]
    assert gap["difference"] == pytest.approx(expected)
    assert 0 < gap["interval_95"][0] < expected < gap["interval_95"][1]
    assert gap["fraction_above_zero"] == 1.0
    chosen = {"targeted": "lira", "random_0": "loss", "random_1": "lira"}
    fixed = strongest_auc_gap(scores, "targeted", ["random_0", "random_1"], chosen, resamples=200)
    auc = {m: roc_auc_score(is_member, scores[m][a]) for m, a in chosen.items()}
    assert fixed["difference"] == pytest.approx(
        (auc["random_0"] + auc["random_1"]) / 2 - auc["targeted"]
    )
    assert fixed["difference"] < expected  # random_0's noise attack, not its shifted one
    from ipg_gnn.tools.membership_audit import privacy_markdown

    attack = {"auc": 0.6, "tpr_at_0.01fpr": 0.02}
    row = {
        "test_accuracy": 0.9,
        "train_accuracy": 0.95,
        "params_changed_fraction": 0.05,
        "strongest_auc": 0.6,
        "strongest": "lira",
        "strongest_val_auc": 0.6,
        "chosen_on_val_auc": 0.6,
        "attacks": {"lira": attack},
    }
    text = privacy_markdown(
        {
            "models": {"targeted": row},
            "targeted_lead": {"random": gap},
            "targeted_lead_chosen_on_val": {"random": fixed},
        }
    )
    assert f"strongest on test) minus the targeted repair's: {gap['difference']:+.4f}" in text
    assert f"strongest on ipg_val minus the targeted repair's: {fixed['difference']:+.4f}" in text
    scores["random_1"]["is_member"] = is_member[::-1]
    with pytest.raises(ValueError, match="test different inputs"):
        strongest_auc_gap(scores, "targeted", ["random_0", "random_1"], resamples=2)


def test_loss_threshold_and_lira_beat_chance_on_an_overfit_toy():
    """A small MLP memorises 200 points with noisy labels; shadow models train on other
    points of the same distribution."""
    from ipg_gnn.targets import MLP

    def data(n: int, seed: int) -> Images:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 1, 1, 4, generator=g)
        y = (x.sum((1, 2, 3)) > 0).long()
        flip = torch.rand(n, generator=g) < 0.3
        return Images(x, torch.where(flip, 1 - y, y))

    def fit(images: Images, seed: int) -> torch.nn.Module:
        """Full-batch Adam to memorisation (a plain loop: Lightning's per-epoch overhead would
        dominate this test)."""
        torch.manual_seed(seed)
        model = MLP([1, 1, 4], 2, [64, 64])
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(images.x), images.y).backward()
            optimiser.step()
        return model.eval()

    members, nonmembers = data(200, 0), data(200, 1)
    target = fit(members, 0)
    shadows = [fit(data(200, 10 + i), i + 1) for i in range(3)]
    x, y = torch.cat([nonmembers.x, members.x]), torch.cat([nonmembers.y, members.y])
    is_member = torch.cat([torch.zeros(200), torch.ones(200)]).long()
    logits = logits_of(target, x)
    loss = attack_metrics(attack_scores(logits, y)["loss"], is_member, 0.0)
    out = torch.stack([logit_confidence(logits_of(m, x), y) for m in shadows])
    lira = attack_metrics(lira_offline(logit_confidence(logits, y), out), is_member, 0.0)
    assert loss["auc"] > 0.65 and lira["auc"] > 0.65


def test_membership_audit_runs_end_to_end(tmp_path, monkeypatch):
    from ipg_gnn.graphs import GraphStore
    from ipg_gnn.jobs.train import run_train
    from ipg_gnn.runs.train_run import load_train_run
    from ipg_gnn.tools.membership_audit import audit

    run_dir = tmp_path / "logs/train/r1"
    trained = run_train(
        compose_config(
            "train",
            tmp_path,
            [
                "objective=membership",
                "logger=none",
                "dataset=digits",
                # A repair split as large as target_train: the shadow models' data.
                "split.fractions={target_train: 0.3, ipg_train: 0.2, ipg_val: 0.1, "
                "repair: 0.3, test: 0.1}",
                "split.max_size.target_train=300",
                "target.train.epochs=3",
                "ipg.calibration_size=100",
                # the membership experiments' detector: label features, true_class readout,
                # and the audit's GNN on shadow-calibrated label features
                "ipg.label_features=true",
                "gnn=true_class",
                "objective.lira.calibrated_gnn=true",
                "gnn.train.max_epochs=1",
                "detector.baselines={}",
                "detector.transfer=false",
                f"paths.output_dir={run_dir}",
            ],
        )
    )
    report = trained["attack"]
    assert report["n_members"] == report["n_nonmembers"] == 90
    assert 0 <= report["member_acc"] <= 1 and 0 <= report["nonmember_acc"] <= 1
    run = load_train_run(run_dir)
    ipgs = trained["ipg"]
    train_index = set(run.splits.indices["target_train"])
    drawn: list[set[int]] = []
    for split in ("ipg_train", "ipg_val", "test"):
        stores = ipgs["stores"][split]
        member = GraphStore(Path(ipgs["root"]) / stores["member"]).load()
        nonmember = GraphStore(Path(ipgs["root"]) / stores["nonmember"]).load()
        assert len(member["source_index"]) == len(nonmember["source_index"])
        assert set(member["source_index"].tolist()) <= train_index
        assert set(nonmember["source_index"].tolist()) <= set(run.splits.indices[split])
        drawn.append(set(member["source_index"].tolist()))
    assert not (drawn[0] & drawn[1] or drawn[0] & drawn[2] or drawn[1] & drawn[2])

    result = audit(run_dir, tmp_path / "audit", shadows=2)
    attacks = result["attacks"]
    assert set(attacks) == {
        "GNN",
        "GNN_calibrated",
        "flat",
        "flat_calibrated",
        "loss",
        "confidence",
        "entropy",
        "lira",
        "lira_fixed_variance",
    }
    assert all(a["n_members"] == a["n_nonmembers"] == 90 for a in attacks.values())
    # Oriented on ipg_val, so no attack scores below chance there.
    assert all(0.5 <= a["val_auc"] <= 1 for a in attacks.values())
    assert result["generalisation"]["member"]["n"] == 300
    saved = json.loads((tmp_path / "audit/membership_audit.json").read_text())
    assert saved["strongest_baseline"] in attacks
    assert set(saved["leads_tpr_at_0.01fpr"]) == {"GNN", "GNN_calibrated"}
    assert saved["label_features"] and 0 <= saved["calibrated_gnn"]["best_val_auroc"] <= 1
    assert (tmp_path / "audit/membership_roc.png").is_file()
    assert "| lira |" in (tmp_path / "audit/membership_audit.md").read_text()

    # Privacy repair of the run, then every model audited with the attacks re-fitted to it.
    from ipg_gnn.jobs.repair import run_repair
    from ipg_gnn.tools.membership_audit import audit_repair

    repair_dir = tmp_path / "logs/repair/r1"
    repaired = run_repair(
        compose_config(
            "repair",
            tmp_path,
            [
                "experiment=membership_repair",
                "logger=none",
                f"train_dir={run_dir}",
                "objective.references=2",
                "repair.finetune.epochs=3",
                "repair.methods.random.draws=1",
                "repair.baselines=[random,dp_sgd]",
                "++repair.methods.dp_sgd.finetune.epochs=1",
                f"paths.output_dir={repair_dir}",
            ],
        )
    )
    assert 0 < repaired["after"]["params_changed_fraction"] <= 0.1
    privacy = audit_repair(repair_dir, shadows=2)["models"]
    assert set(privacy) == {"original", "targeted", "random", "dp_sgd"}
    # Each repaired model was audited as its own train run: its GNN re-fitted on its IPGs.
    for name in ("targeted", "random", "dp_sgd"):
        refit = load_train_run(repair_dir / "audit" / name)
        assert refit.cfg.target.checkpoint.endswith(f"{name}.pt") or name == "targeted"
        assert (repair_dir / "audit" / name / "detector.pt").is_file()
    assert privacy["original"]["attacks"]["loss"] == attacks["loss"]
    assert all(0 <= r["test_accuracy"] <= 1 for r in privacy.values())
    assert "| targeted |" in (repair_dir / "privacy_audit.md").read_text()
    assert (repair_dir / "privacy_tradeoff.png").is_file()
    saved = np.load(repair_dir / "audit/targeted/membership_scores.npz")
    assert set(saved.files) == {"is_member", *privacy["targeted"]["attacks"]}
    # A second comparison reuses every audit written (an interrupted one resumes).
    import ipg_gnn.tools.membership_audit as membership_audit

    def refuse(*args):
        raise AssertionError(f"audited again: {args}")

    monkeypatch.setattr(membership_audit, "audit", refuse)
    again = audit_repair(repair_dir, shadows=2)["models"]
    assert json.dumps(again, sort_keys=True) == json.dumps(privacy, sort_keys=True)
