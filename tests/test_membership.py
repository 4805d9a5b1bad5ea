"""objective=membership: populations, attack scores and metrics, and the audit end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.objectives import Membership, Selection
from ipg_gnn.objectives.membership import (
    attack_metrics,
    attack_scores,
    fit_threshold,
    lira_offline,
    logit_confidence,
    logits_of,
)
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
        ({"parts": {"repair": 0.5}}, "holds no audited member"),
        ({"parts": {"test": 0.5}, "lira": {"split": "target_train"}}, "holds no audited member"),
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
    shadow = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # OUT means 1 and 2, spread sqrt(2)
    target = torch.tensor([1.0 + math.sqrt(2), 2.0])
    assert torch.allclose(lira_offline(target, shadow), torch.tensor([1.0, 0.0]))
    assert torch.allclose(
        lira_offline(target, shadow, global_variance=True), torch.tensor([1, 0.0])
    )
    with pytest.raises(ConfigError, match="at least 2 shadow"):
        lira_offline(target, shadow[:1])


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


def test_membership_audit_runs_end_to_end(tmp_path):
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
    assert report["n_members"] == report["n_nonmembers"] == 120
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
    assert all(a["n_members"] == a["n_nonmembers"] == 120 for a in attacks.values())
    assert result["generalisation"]["member"]["n"] == 300
    saved = json.loads((tmp_path / "audit/membership_audit.json").read_text())
    assert saved["strongest_baseline"] in attacks
    assert set(saved["leads_tpr_at_0.01fpr"]) == {"GNN", "GNN_calibrated"}
    assert saved["label_features"] and 0 <= saved["calibrated_gnn"]["best_val_auroc"] <= 1
    assert (tmp_path / "audit/membership_roc.png").is_file()
    assert "| lira |" in (tmp_path / "audit/membership_audit.md").read_text()
