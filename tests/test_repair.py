"""Attribution, repair plans, masked repair and the repair.py job."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging

import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent

from ipg_gnn.attacks import Attack, seed_attack_rng
from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.explain import (
    GNNExplainer,
    IntegratedGradients,
    PairedIntegratedGradients,
    PGExplainer,
    Saliency,
    flow_difference,
    loss_gradient,
)
from ipg_gnn.explain.base import ranking_agreement
from ipg_gnn.explain.flow import group_flow_difference
from ipg_gnn.objectives import AdversarialLoss, Robustness
from ipg_gnn.plan import PlanError, RepairPlan, make_plan
from ipg_gnn.provenance import trace
from ipg_gnn.repair import LayerFinetune, PatchedModel, all_masks, masked_finetune, plan_masks
from ipg_gnn.runs.checkpoints import load_checkpoint
from ipg_gnn.runs.run_dir import RunDirectoryError
from ipg_gnn.targets import MLP
from tests.conftest import compose_config
from tests.test_detect import ipgs  # noqa: F401  (module fixture: real FGSM IPGs)

PGD = functools.partial(
    ProjectedGradientDescent, norm="inf", eps=0.15, eps_step=0.03, max_iter=5, verbose=False
)


@pytest.fixture(scope="module")
def detector(ipgs):  # noqa: F811
    from ipg_gnn.detect import IPGClassifier

    torch.manual_seed(0)
    return IPGClassifier(ipgs["test"].topology.num_nodes).eval()


EXPLAINERS = [
    Saliency("fgsm", batch_size=8),
    IntegratedGradients("fgsm", batch_size=8),
    GNNExplainer("fgsm", batch_size=8, epochs=2),
    PGExplainer("fgsm", batch_size=8, epochs=2),
    PairedIntegratedGradients("fgsm", batch_size=8, steps=4),
]


def saliency(detector, dataset):
    return Saliency("fgsm").attribute(detector, dataset, progress=False)


@pytest.mark.parametrize("explainer", EXPLAINERS, ids=lambda e: e.name)
def test_every_explainer_gives_contrasted_node_and_edge_importances(explainer, ipgs, detector):  # noqa: F811
    view = ipgs["test"][torch.cat([torch.arange(8), torch.arange(150, 158)])]
    a = explainer.attribute(detector, view, progress=False)
    topology = ipgs["test"].topology
    assert a.node.shape == (topology.num_nodes,)
    assert a.edge.shape == (topology.edge_index.shape[1],)
    assert torch.isfinite(a.node).all() and float(a.edge_contrast.abs().sum()) > 0
    torch.testing.assert_close(a.node, a.node_contrast - a.node_reference)


def test_paired_ig_splits_each_inputs_logit_change_over_units_and_weights(ipgs, detector):  # noqa: F811
    from torch_geometric.data import Batch

    from ipg_gnn.explain.detector import paired_graphs, path_integrated_gradients

    test = ipgs["test"]
    pairs = paired_graphs(test)[:6]
    meta = test.meta
    assert torch.equal(meta["source_index"][pairs[:, 0]], meta["source_index"][pairs[:, 1]])
    assert not meta["is_contrast"][pairs[:, 0]].any() and meta["is_contrast"][pairs[:, 1]].all()
    reference = Batch.from_data_list([test[int(i)] for i in pairs[:, 0]])
    contrast = Batch.from_data_list([test[int(i)] for i in pairs[:, 1]])
    node, edge = path_integrated_gradients(detector, reference, contrast, steps=64)
    with torch.no_grad():
        change = detector(contrast.x, contrast.edge_index, contrast.edge_attr, contrast.batch)
        change -= detector(reference.x, reference.edge_index, reference.edge_attr, reference.batch)
    per_graph = torch.zeros(len(pairs)).index_add_(0, reference.batch, node.sum(-1))
    edge_graph = reference.batch[reference.edge_index[0]]
    per_graph.index_add_(0, edge_graph, edge.sum(-1))
    # Completeness: the attributions add up to the logit's change (midpoint rule's error aside).
    torch.testing.assert_close(per_graph, change.flatten(), rtol=0.02, atol=0.02)
    assert float(change.abs().max()) > 0.05, "the check needs logit changes to split"
    a = PairedIntegratedGradients("fgsm", batch_size=4, steps=8).attribute(
        detector, test[torch.cat([pairs[:, 0], pairs[:, 1]])], progress=False
    )
    assert set(a.stability) == {
        "spearman_halves",
        f"top{round(0.1 * test.topology.num_nodes)}_overlap",
    }
    assert -1 <= a.stability["spearman_halves"] <= 1


def test_ranking_agreement_gives_tied_scores_their_mean_rank():
    # Units 0 and 1 tie in both rankings (mean rank 1.5), units 2 and 3 swap places: ranks
    # [1.5, 1.5, 3, 4] and [1.5, 1.5, 4, 3], centred [-1, -1, .5, 1.5] and [-1, -1, 1.5, .5]:
    # covariance 3.5 over variance 4.5. Ordering the tie by chance would give 0.6 or 0.8.
    a, b = torch.tensor([0.0, 0.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 2.0, 1.0])
    agreement = ranking_agreement(a, b, top_fraction=0.5)
    assert agreement["spearman_halves"] == pytest.approx(3.5 / 4.5)
    assert agreement["top2_overlap"] == 1.0
    assert ranking_agreement(a, torch.ones(4), 0.25)["spearman_halves"] is None


def test_flow_difference_matches_a_hand_computation():
    torch.manual_seed(0)
    model = MLP((1, 1, 3), 2, widths=(4,)).eval()
    x = torch.rand(5, 1, 1, 3)
    x_adv = x + 0.1 * torch.randn_like(x)
    a, topology = flow_difference(model, x, x_adv, chunk_size=2, progress=False)
    # Nodes: 3 inputs, 4 hidden units, 2 outputs; every weight is an edge.
    assert topology.num_nodes == 9 and topology.edge_index.shape[1] == 4 * 3 + 2 * 4
    w1, w2 = model.net[1].weight.detach(), model.net[3].weight.detach()
    with torch.no_grad():
        hidden = [model.net[:3](v) for v in (x, x_adv)]
        out = [model(v) for v in (x, x_adv)]
    first = (w1 * (x_adv - x).flatten(1)[:, None, :]).abs().mean(0)  # (4, 3): |W dx|
    second = (w2 * (hidden[1] - hidden[0])[:, None, :]).abs().mean(0)  # (2, 4)
    torch.testing.assert_close(a.edge, torch.cat([first.flatten(), second.flatten()]))
    expected_nodes = torch.cat(
        [first.sum(0), second.sum(0), (out[1] - out[0]).abs().mean(0)]  # outputs: |d logit|
    )
    torch.testing.assert_close(a.node, expected_nodes)
    assert float(a.node_reference.abs().sum()) == 0.0  # the pairing is the contrast
    # Relative: each change divided by the benign inputs' mean |flow| at the same place.
    r, _ = flow_difference(model, x, x_adv, chunk_size=2, progress=False, relative=True)
    ref_first = (w1 * x.flatten(1)[:, None, :]).abs().mean(0)
    ref_second = (w2 * hidden[0][:, None, :]).abs().mean(0)
    torch.testing.assert_close(r.edge[:12], (first / ref_first).flatten())
    alive = ref_second > 0  # a hidden unit dead on every benign input passes no flow
    assert 0 < int(alive.sum()) < alive.numel()
    torch.testing.assert_close(r.edge[12:][alive.flatten()], (second / ref_second)[alive])
    assert torch.isfinite(r.edge).all() and torch.isfinite(r.node).all()  # no division by 0
    torch.testing.assert_close(r.node[:3], first.sum(0) / ref_first.sum(0))
    units = alive[0]
    torch.testing.assert_close(r.node[3:7][units], (second.sum(0) / ref_second.sum(0))[units])
    torch.testing.assert_close(r.node[7:], (out[1] - out[0]).abs().mean(0) / out[0].abs().mean(0))
    with pytest.raises(ValueError, match="pair one to one"):
        flow_difference(model, x, x_adv[:3], progress=False)


def test_group_flow_difference_matches_a_hand_computation():
    torch.manual_seed(0)
    model = MLP((1, 1, 2), 2, widths=(3,)).eval()
    # Label 0: feature 0 is +-1, feature 1 is 1; label 1: twice that; label 2 (only in the
    # reference population) is left out. The contrast shifts every input by 0.1.
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    x0 = torch.stack([sign, torch.ones(4)], 1)
    x = torch.cat([x0, 2 * x0, 50 * x0]).reshape(-1, 1, 1, 2)
    y = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    reference, contrast = Images(x, y), Images(x[:8] + 0.1, y[:8])
    a, topology = group_flow_difference(model, reference, contrast, chunk_size=3)
    w1 = model.net[1].weight.detach()
    assert topology.num_nodes == 7
    torch.testing.assert_close(a.edge[:6], (0.1 * w1).abs().flatten())  # both labels: 0.1 |w|
    # Relative: over the mean |flow| of the reference (|w| at label 0, 2 |w| at label 1),
    # so +-1 inputs do not cancel: every first-layer edge scores 0.1 / 1.5.
    r, _ = group_flow_difference(model, reference, contrast, chunk_size=3, relative=True)
    torch.testing.assert_close(r.edge[:6], torch.full((6,), 0.1 / 1.5))
    with pytest.raises(ValueError, match="share no true label"):
        group_flow_difference(model, reference, Images(x[:2], torch.tensor([5, 5])))


def test_loss_gradient_matches_a_hand_computation():
    torch.manual_seed(0)
    model = MLP((1, 1, 3), 2, widths=(4,)).eval().requires_grad_(False)  # frozen: still works
    x, y = torch.rand(5, 1, 1, 3), torch.tensor([0, 1, 1, 0, 1])
    a, topology = loss_gradient(model, Images(x, y), batch_size=2, progress=False)
    layers = (model.net[1], model.net[3])
    with torch.enable_grad():
        model.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), y)  # batches of 2, 2, 1 average to it
        w1, b1, w2, b2 = (
            g**2 for g in torch.autograd.grad(loss, [p for m in layers for p in (m.weight, m.bias)])
        )
    torch.testing.assert_close(a.edge, torch.cat([w1.flatten(), w2.flatten()]))
    expected_nodes = torch.cat([torch.zeros(3), w1.sum(1) + b1, w2.sum(1) + b2])
    torch.testing.assert_close(a.node, expected_nodes)  # inputs own no parameters: 0
    assert topology.num_nodes == 9 and set(a.stability) == {"spearman_halves", "top1_overlap"}
    with pytest.raises(ValueError, match="at least one input"):
        loss_gradient(model, Images(x[:0], y[:0]), progress=False)


def test_loss_gradient_maps_convolutions_batchnorm_and_flattened_maps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 2 * 2, 3),
    ).eval()  # fmt: skip
    x, y = torch.rand(6, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    a, topology = loss_gradient(model, Images(x, y), batch_size=6, progress=False)
    assert model.training is False and all(p.requires_grad for p in model.parameters())
    loss = torch.nn.functional.cross_entropy(model(x), y)
    params = [model[0].weight, model[1].weight, model[1].bias, model[3].weight, model[3].bias]
    first, scale, shift, conv, bias, head = (
        g**2 for g in torch.autograd.grad(loss, [*params, model[6].weight])
    )
    offset = {layer["name"]: layer["offset"] for layer in topology.layers}
    # A unit of the first conv owns its filter and the folded BatchNorm's scale and shift.
    lo = offset["0"]
    torch.testing.assert_close(a.node[lo : lo + 4], first.flatten(1).sum(1) + scale + shift)
    src, dst = topology.edge_index
    lo = offset["3"]
    into = torch.nonzero((dst >= lo) & (dst < lo + 4)).flatten()
    assert len(into) == 4 * 2  # a grouped convolution: each unit reads its own group's 2
    for e in into.tolist():
        unit, source = int(dst[e]) - lo, int(src[e]) - offset["0"]
        assert source // 2 == unit // 2
        torch.testing.assert_close(a.edge[e], conv[unit, source % 2].sum())  # (4, 2, 3, 3)
    torch.testing.assert_close(a.node[lo : lo + 4], conv.flatten(1).sum(1) + bias)
    # The head reads the flattened map: one edge per channel, its 4 positions summed.
    lo = offset["6"]
    for e in torch.nonzero(dst >= lo).flatten().tolist():
        unit, channel = int(dst[e]) - lo, int(src[e]) - offset["3"]
        torch.testing.assert_close(a.edge[e], head[unit, 4 * channel : 4 * channel + 4].sum())


def test_plan_ranks_maps_back_and_refuses_bad_requests(ipgs, detector, tmp_path, caplog):  # noqa: F811
    view = ipgs["test"][torch.cat([torch.arange(8), torch.arange(150, 158)])]
    a = saliency(detector, view)
    topology = ipgs["test"].topology
    plan = make_plan(a, topology, "node", ["net.3"], k=4)
    scores = a.node[350:400]
    assert plan.targets == {"net.3": scores.topk(4).indices.tolist()}
    assert [u for u, _ in plan.layers["net.3"]["units"]] == scores.argsort(
        descending=True, stable=True
    ).tolist()
    edge_plan = make_plan(a, topology, "edge", ["net.5"], k=3)
    first = edge_plan.layers["net.5"]["edges"][0]
    assert first[1] == "net.3" and first[0] == 350 + first[2] and 0 <= first[3] < 10
    assert RepairPlan.load(plan.save(tmp_path / "p.json")) == plan
    with pytest.raises(PlanError, match="valid layers: net.1, net.3, net.5"):
        make_plan(a, topology, "node", ["net.9"], k=1)
    with pytest.raises(PlanError, match="does not fit layer net.5"):
        make_plan(a, topology, "node", ["net.5"], k=11)
    with pytest.raises(PlanError, match="made for model"):
        plan.check_model("0" * 16)
    assert "arbitrary_targets" not in plan.provenance  # distinct saliency scores
    # An attribution constant over a layer (zero: outside the detector's reach) cannot rank it:
    # the plan says so instead of passing index order off as a ranking.
    first = torch.arange(350)  # net.1's units
    flat = dataclasses.replace(
        a,
        node_contrast=a.node_contrast.clone().index_fill_(0, first, 0.0),
        node_reference=a.node_reference.clone().index_fill_(0, first, 0.0),
    )
    with caplog.at_level(logging.WARNING, logger="ipg_gnn.plan.repair_plan"):
        tied = make_plan(flat, topology, "node", ["net.1", "net.3"], k=4)
    assert tied.targets["net.1"] == [0, 1, 2, 3]
    assert tied.provenance["arbitrary_targets"] == {"net.1": 4}
    assert "taken in index order" in caplog.text
    # Targets chosen anew (a reused ranking, an allocation) have their ties recounted.
    assert "arbitrary_targets" not in tied.retargeted({"net.3": [0]}).provenance
    again = tied.retargeted({"net.1": [0, 1]}, allocation={"rounds": []})
    assert again.provenance["arbitrary_targets"] == {"net.1": 2}
    assert again.provenance["allocation"] == {"rounds": []} and again.level == "node"


@pytest.mark.parametrize("level", ["node", "edge"])
def test_masked_repair_changes_only_planned_entries(level, trained_default, ipgs, detector):  # noqa: F811
    model = trained_default["model"]
    view = ipgs["test"][torch.cat([torch.arange(8), torch.arange(150, 158)])]
    plan = make_plan(
        saliency(detector, view),
        ipgs["test"].topology,
        level,
        ["net.3"],
        k=3,
    )
    images = trained_default["splits"].images(trained_default["data"], "repair")
    capture_plan = trace(model, images.x[:1])
    masks = plan_masks(model, plan, capture_plan)
    allowed = int(masks["net.3.weight"].sum())
    assert allowed == (3 * 350 if level == "node" else 3)
    repaired = MLP((1, 28, 28), 10)
    repaired.load_state_dict(model.state_dict())
    info = masked_finetune(
        repaired,
        masks,
        images.subset(range(0, 400, 4)),
        images.subset(range(1, 400, 4)),
        AdversarialLoss(Attack("pgd", PGD, progress=False), {}, seed=0),
        epochs=1,
        batch_size=25,
        lr=1e-2,
        tolerance=1.0,
        progress=False,
    )
    before, after = model.state_dict(), repaired.state_dict()
    for name in before:
        mask = masks.get(name, torch.zeros_like(before[name], dtype=torch.bool))
        assert torch.equal(before[name][~mask], after[name][~mask]), name
    assert 0 < info["params_changed"] <= allowed + (3 if level == "node" else 0)


@pytest.mark.parametrize("patience", [1, 2, None])
def test_tolerance_stops_and_keeps_weights_within_it(trained_default, patience):
    model = trained_default["model"]
    images = trained_default["splits"].images(trained_default["data"], "repair")
    repaired = MLP((1, 28, 28), 10)
    repaired.load_state_dict(model.state_dict())
    info = masked_finetune(
        repaired,
        all_masks(repaired),
        images.subset(range(0, 400, 2)),
        images.subset(range(1, 400, 4)),
        AdversarialLoss(Attack("pgd", PGD, progress=False), {}, seed=0),
        epochs=3,
        batch_size=20,
        lr=0.2,
        tolerance=0.0,
        check_every=2,
        patience=patience,
        progress=False,
    )
    history = info["history"]
    below = [h["val_clean_acc"] < info["val_clean_acc_before"] for h in history]
    if patience is None:
        # No early stop: every one of the 3 x 10 steps ran, checked every 2 steps.
        assert [h["step"] for h in history] == list(range(2, 31, 2))
        assert not any(h.get("stopped") for h in history) and any(below)
    else:
        # It stopped after `patience` checks in a row below the starting accuracy, no sooner.
        assert history[-1].get("stopped")
        assert all(below[-patience:])
        streak = 0
        for b in below[:-1]:
            streak = streak + 1 if b else 0
            assert streak < patience
        assert all(h["step"] % 2 == 0 for h in history)
    from ipg_gnn.targets import accuracy

    assert accuracy(repaired, images.subset(range(1, 400, 4))) >= info["val_clean_acc_before"]


def test_activation_patch_fixes_units_and_leaves_the_model(trained_default):
    model = trained_default["model"]
    x = trained_default["data"].train.x[:5]
    patched = PatchedModel(model, {"net.3": ([2, 7], torch.tensor([0.5, -1.0]))})
    seen = {}

    def record(module, args, out):
        seen["in"] = args[0]

    patched.model.net[4].register_forward_hook(record)
    patched(x)
    assert torch.equal(seen["in"][:, 2], torch.full((5,), 0.5))
    assert torch.equal(seen["in"][:, 7], torch.full((5,), -1.0))
    assert torch.equal(model(x), trained_default["model"](x))
    report, _ = Robustness({}).evaluate(
        patched,
        trained_default["splits"].images(trained_default["data"], "test").subset(range(20)),
        batch_size=10,
        seed=0,
    )
    assert 0 <= report["clean_acc"] <= 1


def tiny_train_run(tmp_path, *overrides: str) -> dict:
    """A train.py run on capped splits with one training batch, as the latest run of
    `tmp_path/logs` (where repair.py looks by default)."""
    from ipg_gnn.jobs.train import run_train

    return run_train(
        compose_config(
            "train",
            tmp_path,
            [
                "+trainer.fast_dev_run=true",
                "attack=[fgsm,pgd]",
                "logger=none",
                "split.max_size={ipg_train:60,ipg_val:30,repair:40,test:30}",
                f"paths.output_dir={tmp_path}/logs/train/r1",
                *overrides,
            ],
        )
    )


def test_repair_job_end_to_end(tmp_path, monkeypatch):
    from ipg_gnn.jobs.repair import run_repair

    trained = tiny_train_run(tmp_path)
    overrides = [
        "attack=[fgsm,square]",
        "logger=csv",
        "repair.val_evaluations=[fgsm]",
        "repair.layer=net.3",
        "repair.k=2",
        "repair.finetune.epochs=1",
        "repair.baselines=[random,activation_patch]",
        "repair.methods.random.draws=2",
        "attack.square.art_attack.max_iter=20",
        "objective.train_attack.art_attack.max_iter=3",
    ]
    report = run_repair(compose_config("repair", tmp_path, overrides))
    run = tmp_path / "run"
    assert json.loads((run / "repair_report.json").read_text()) == report
    assert report["n_test"] == 30 and set(report["before"]["adv_acc"]) == {"fgsm", "square"}
    assert report["train_dir"] == str(tmp_path / "logs" / "train" / "r1")  # the latest run
    # FGSM is deterministic: re-crafted on the original it matches train.py's numbers.
    assert report["before"]["clean_acc"] == pytest.approx(trained["attack"]["clean_acc"])
    assert report["before"]["adv_acc"]["fgsm"] == pytest.approx(
        trained["attack"]["adv_acc"]["fgsm"]
    )
    for key in (
        "clean_acc",
        "adv_acc",
        "transfer_acc",
        "params_changed",
        "params_changed_fraction",
    ):
        assert key in report["after"], key
    assert set(report["baselines"]) == {"random", "activation_patch"}
    # Two random plans (seeds 0 and 1): the baseline row is their mean, each kept under draws.
    draws = report["baselines"]["random"]["draws"]
    assert len(draws) == 2 and all(d["params_allowed"] == 2 * 351 for d in draws)
    assert report["baselines"]["random"]["adv_acc"]["fgsm"] == pytest.approx(
        (draws[0]["adv_acc"]["fgsm"] + draws[1]["adv_acc"]["fgsm"]) / 2
    )
    # Validation numbers (repair split's held-out part: 8 of its 40 inputs) for every model.
    for r in (report["before"], report["after"], *report["baselines"].values()):
        assert r["val"]["n"] == 8 and set(r["val"]["adv_acc"]) == {"fgsm"}
    assert report["plan"]["targets"] == {"net.3": 2}
    assert report["after"]["params_changed"] <= 2 * 351
    plan = RepairPlan.load(run / "repair_plan.json")
    assert list(plan.targets) == ["net.3"] and (run / "repair_plan.png").stat().st_size > 10_000
    arch = {
        "_target_": "ipg_gnn.targets.MLP",
        "widths": [350, 50],
        "input_shape": [1, 28, 28],
        "num_classes": 10,
    }
    load_checkpoint(run / "repaired.pt", arch)
    # The numbers reach the loggers under path keys (CSV here; W&B the same way).
    logged = (run / "csv/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"after/clean_acc", "baselines/random/adv_acc/fgsm", "before/val/clean_acc"} <= set(
        logged
    )
    assert (run / "finetune_curves.png").stat().st_size > 10_000
    markdown = (run / "repair_report.md").read_text()
    assert "| targeted repair |" in markdown and "Validation part of the repair split" in markdown
    assert "| random (mean of 2 plans) |" in markdown
    from ipg_gnn.tools.summary import gather
    from ipg_gnn.tools.summary import main as summary

    text = summary([str(tmp_path)])
    assert "| net.3 | node | 2 |" in text and (tmp_path / "summary.json").is_file()
    # Robust accuracy heads the sweep's columns: the random plans' mean ± sd and the lead over it.
    head, _, row = (line.split(" | ") for line in text.splitlines()[:3])
    robust_draws = [d["robust_acc"] for d in draws]
    lead = report["after"]["robust_acc"] - sum(robust_draws) / 2
    assert row[head.index("robust lead over random")] == f"{lead * 100:+.1f}"
    assert row[head.index("robust random plans")].endswith("(2)")
    assert (tmp_path / "summary.png").stat().st_size > 10_000
    # A second job of the same budget whose draws are 2 and 3 (`first_draw=2`) joins the row; a
    # draw number two jobs share (this run read twice) is counted once.
    second = tmp_path.parent / f"{tmp_path.name}_second"
    second.mkdir()
    (second / "repair_config.yaml").write_text((run / "repair_config.yaml").read_text())
    other = json.loads((run / "repair_report.json").read_text())
    for number, draw in enumerate(other["baselines"]["random"]["draws"], start=2):
        draw.update(draw=number, robust_acc=1.0)
    (second / "repair_report.json").write_text(json.dumps(other))
    (merged,) = gather(run, second, run)
    assert [d.get("draw") for d in merged["random_draws"]] == [0, 1, 2, 3]
    assert merged["random"]["robust_acc"] == pytest.approx((sum(robust_draws) + 2) / 4)
    # A job of another setting (here another seed) is a row of its own.
    config = (run / "repair_config.yaml").read_text()
    assert "\nseed: 0\n" in config
    (second / "repair_config.yaml").write_text(config.replace("\nseed: 0\n", "\nseed: 1\n"))
    assert len(gather(run, second)) == 2
    # Every baseline's model is kept (an inference-time patch has no checkpoint); the independent
    # check attacks each kept model.
    models = sorted(p.name for p in (run / "models").iterdir())
    assert models == ["random_0.pt", "random_1.pt"]  # each draw; not the patch
    from ipg_gnn.tools.reference_check import reference_check

    rows = reference_check(run, steps=5, restarts=1)
    assert set(rows) == {"before", "after", "random_0", "random_1"}
    assert rows["after"]["reported"] == report["after"]["robust_acc"]
    for d in range(2):
        draw = report["baselines"]["random"]["draws"][d]
        assert rows[f"random_{d}"]["reported"] == draw["robust_acc"]
    assert all(0 <= r["reference"] <= report["before"]["clean_acc"] + 1e-9 for r in rows.values())
    assert json.loads((run / "reference_check.json").read_text())["models"] == rows
    # Interrupted in the second random draw, the same command into the same directory resumes:
    # the plan, the original's evaluation and the finished draws are taken as done, and the
    # numbers equal the uninterrupted run's.
    from ipg_gnn.repair import RandomPlanFinetune

    resumable = compose_config("repair", tmp_path, [*overrides, f"paths.output_dir={tmp_path}/r4"])
    random_draw = RandomPlanFinetune.__call__

    def interrupted(self, ctx, draw=0):
        if draw == 1:
            raise KeyboardInterrupt
        return random_draw(self, ctx, draw)

    monkeypatch.setattr(RandomPlanFinetune, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_repair(resumable)
    monkeypatch.undo()
    resumed = run_repair(resumable)
    assert resumed["resumed"] == [
        "repair_plan.json",
        "evaluation_before.pt",
        "draws/targeted.pt",
        "draws/random_0.pt",
    ]
    assert {"attribution", "repair_targeted", "repair_random_0"}.isdisjoint(resumed["timing_s"])

    def numbers(result):
        keys = ("clean_acc", "adv_acc", "robust_acc", "val", "transfer_acc")
        return {k: result[k] for k in keys if k in result}

    assert numbers(resumed["before"]) == numbers(report["before"])
    assert numbers(resumed["after"]) == numbers(report["after"])
    for again, first in zip(
        resumed["baselines"]["random"]["draws"], report["baselines"]["random"]["draws"], strict=True
    ):
        assert numbers(again) == numbers(first)
    patch = resumed["baselines"]["activation_patch"]
    assert numbers(patch) == numbers(report["baselines"]["activation_patch"])
    assert "transfer_acc" in resumed["after"]  # read off the reloaded original's examples
    # A draw whose model file changed is run again; the others are taken as done.
    (tmp_path / "r4/models/random_1.pt").write_bytes(b"damaged")
    again = run_repair(resumable)
    assert "draws/random_1.pt" not in again["resumed"] and "repair_random_1" in again["timing_s"]
    assert "draws/random_0.pt" in again["resumed"]
    assert numbers(again["baselines"]["random"]["draws"][1]) == numbers(
        report["baselines"]["random"]["draws"][1]
    )
    load_checkpoint(tmp_path / "r4/models/random_1.pt", arch)
    # A directory whose repair was of another model (the train run made again) is refused.
    monkeypatch.setattr("ipg_gnn.jobs.repair.model_fingerprint", lambda model: "another")
    with pytest.raises(RunDirectoryError, match="holds a repair of another model"):
        run_repair(resumable)
    monkeypatch.undo()
    bad = compose_config("repair", tmp_path, ["attack=[fgsm]", "repair.val_evaluations=[pgd]"])
    with pytest.raises(ValueError, match="not among the objective's evaluations"):
        run_repair(bad)
    with pytest.raises(ValueError, match="draws must be >= 1"):
        run_repair(compose_config("repair", tmp_path, ["repair.methods.random.draws=0"]))
    with pytest.raises(ValueError, match=r"unknown repair methods \['nope'\]"):
        run_repair(compose_config("repair", tmp_path, ["repair.baselines=[nope]"]))
    bad = compose_config("repair", tmp_path, ["repair.layer=net.2"])
    with pytest.raises(PlanError, match="valid layers: net.1, net.3, net.5"):
        run_repair(bad)
    (tmp_path / "logs/train/r1/detector.pt").unlink()
    with pytest.raises(FileNotFoundError, match="has no detector"):
        run_repair(compose_config("repair", tmp_path, [f"paths.output_dir={tmp_path}/run2"]))
    # A saved plan's ranking is reused (no explainer, so no detector): targets chosen anew.
    reuse = [
        "attack=[fgsm]",
        "repair.val_evaluations=[fgsm]",
        "robust_eval=none",
        "repair.layer=null",
        "repair.k=1",
        "repair.finetune.epochs=1",
        "repair.baselines=[]",
        "objective.train_attack.art_attack.max_iter=3",
    ]
    with pytest.raises(ValueError, match="repair.plan=nowhere.json: no such file"):
        run_repair(compose_config("repair", tmp_path, [*reuse, "repair.plan=nowhere.json"]))
    again = run_repair(
        compose_config(
            "repair",
            tmp_path,
            [*reuse, f"repair.plan={run / 'repair_plan.json'}", f"paths.output_dir={tmp_path}/r3"],
        )
    )
    assert again["plan"]["targets"] == {"net.1": 1, "net.3": 1, "net.5": 1}
    replanned = RepairPlan.load(tmp_path / "r3" / "repair_plan.json")
    assert replanned.targets["net.3"] == [plan.layers["net.3"]["units"][0][0]]
    assert replanned.provenance["reused_from"] == str(run / "repair_plan.json")


def test_flow_difference_plans_first_layer_weights_that_static_ipgs_never_capture(tmp_path):
    from ipg_gnn.jobs.repair import run_repair

    tiny_train_run(tmp_path)
    (tmp_path / "logs/train/r1/detector.pt").unlink()  # the flow needs no detector
    report = run_repair(
        compose_config(
            "repair",
            tmp_path,
            [
                "explainer=flow_difference",
                "attack=[fgsm]",
                "logger=none",
                "repair.val_evaluations=[fgsm]",
                "repair.layer=net.1",
                "repair.level=edge",
                "repair.k=20",
                "repair.finetune.epochs=1",
                # Every fine-tuning method hands its repaired units to the consistency term
                # (masked_finetune refuses the term without them).
                "objective.loss.consistency_weight=1.0",
                "repair.baselines=[random,last_layer]",
                "objective.train_attack.art_attack.max_iter=3",
            ],
        )
    )
    plan = RepairPlan.load(tmp_path / "run" / "repair_plan.json")
    assert plan.provenance["explainer"] == "flow_difference" and plan.provenance["detector"] is None
    edges = plan.layers["net.1"]["edges"]
    assert len(edges) == 784 * 350  # every weight of the first layer is ranked
    assert {e[1] for e in edges[:20]} == {"input"} and [e[4] for e in edges] == sorted(
        (e[4] for e in edges), reverse=True
    )
    assert plan.targets["net.1"] == [[e[0], e[3]] for e in edges[:20]]
    assert 0 < report["after"]["params_changed"] <= 20
    assert (
        report["after"]["params_allowed"] == report["baselines"]["random"]["params_allowed"] == 20
    )


def test_consistency_term_keeps_repaired_units_closer_to_clean(trained_default):
    model = trained_default["model"]
    images = trained_default["splits"].images(trained_default["data"], "repair")
    train, val = images.subset(range(0, 400, 2)), images.subset(range(1, 400, 4))
    units = {"net.3": [0, 1, 2, 3, 4]}
    masks = {
        "net.3.weight": torch.zeros(50, 350, dtype=torch.bool),
        "net.3.bias": torch.zeros(50, dtype=torch.bool),
    }
    masks["net.3.weight"][units["net.3"]] = True
    masks["net.3.bias"][units["net.3"]] = True
    attack = Attack("pgd", PGD, progress=False)

    def gap(consistency_weight: float) -> float:
        loss = AdversarialLoss(attack, units, seed=0, consistency_weight=consistency_weight)
        repaired = MLP((1, 28, 28), 10)
        repaired.load_state_dict(model.state_dict())
        masked_finetune(
            repaired,
            masks,
            train,
            val,
            loss,
            epochs=2,
            batch_size=25,
            lr=1e-2,
            tolerance=1.0,
            progress=False,
        )
        x = val.x
        seed_attack_rng(0)
        x_adv = attack(repaired, x, val.y).x_adv
        with torch.no_grad():
            clean = repaired.net[:4](x)[:, units["net.3"]]
            adv = repaired.net[:4](x_adv)[:, units["net.3"]]
        return float((adv - clean).pow(2).mean())

    assert gap(50.0) < gap(0.0)
    with pytest.raises(ValueError, match="needs the repaired units"):
        AdversarialLoss(attack, {}, seed=0, consistency_weight=1.0)


def test_lookahead_allocation_spends_the_plans_budget_over_its_layers(tmp_path):
    from ipg_gnn.jobs.repair import run_repair

    tiny_train_run(tmp_path)
    overrides = [
        "attack=[fgsm]",
        "logger=none",
        "repair.val_evaluations=[fgsm]",
        "repair.layer=[net.3,net.5]",
        "repair.fraction=0.1",
        "+repair/allocation@repair.allocation=lookahead",
        "repair.allocation.steps=2",
        "repair.allocation.batch_size=8",
        "repair.finetune.epochs=1",
        "repair.baselines=[random]",
        "objective.train_attack.art_attack.max_iter=3",
    ]
    report = run_repair(compose_config("repair", tmp_path, overrides))
    plan = RepairPlan.load(tmp_path / "run" / "repair_plan.json")
    # The per-layer plan's budget: 5 of net.3's 50 units (351 parameters each) and 1 of net.5's
    # 10 (51 each); slices of a quarter of it, greedily by look-ahead gain per parameter.
    allocation = plan.provenance["allocation"]
    assert allocation["budget"] == 5 * 351 + 51
    costs = {"net.3": 351, "net.5": 51}
    spent = sum(len(t) * costs[layer] for layer, t in plan.targets.items())
    assert spent == allocation["rounds"][-1]["params"] <= allocation["budget"]
    gain = 0.0
    for r in allocation["rounds"]:
        per_param = {
            layer: (r["gains"][layer] - gain) / (n * costs[layer])
            for layer, n in r["offers"].items()
        }
        assert r["taken"] == max(per_param, key=per_param.get)
        gain = r["gains"][r["taken"]]
    assert report["plan"]["targets"] == {layer: len(t) for layer, t in plan.targets.items()}
    assert report["after"]["params_allowed"] == spent
    # Random plans draw the same number of targets per layer.
    assert report["baselines"]["random"]["params_allowed"] == spent
    # Within a layer the ranking picks: its top-ranked units.
    for layer, chosen in plan.targets.items():
        assert chosen == [u for u, _ in plan.layers[layer]["units"][: len(chosen)]]
    # A bad allocation setting fails at the door, before any attribution.
    with pytest.raises(ConfigError, match="repair.allocation: an allocation needs chunks"):
        run_repair(compose_config("repair", tmp_path, [*overrides, "repair.allocation.chunks=0"]))


@pytest.mark.parametrize("target", ["cnn", "resnet"])
def test_train_and_repair_run_on_convolutional_targets(target, tmp_path):
    from ipg_gnn.jobs.repair import run_repair

    trained = tiny_train_run(tmp_path, f"target={target}", "detector.transfer=false")
    assert 0.0 <= trained["detection"]["test"]["auroc"] <= 1.0
    report = run_repair(
        compose_config(
            "repair",
            tmp_path,
            [
                "attack=[fgsm]",
                "logger=none",
                "repair.val_evaluations=[fgsm]",
                "repair.finetune.epochs=1",
                "repair.k=2",
                "repair.level=edge",
                "repair.baselines=[activation_patch]",
                "objective.train_attack.art_attack.max_iter=3",
            ],
        )
    )
    # Every weight layer but the first (no captured incoming edges without input nodes).
    targets = report["plan"]["targets"]
    assert len(targets) >= 2 and all(count == 2 for count in targets.values())
    assert next(iter(targets)) not in ("net.0", "stem.0")
    assert report["after"]["params_allowed"] > 0


def test_method_overrides_apply_to_that_method_and_reject_unknown_keys():
    method = LayerFinetune(finetune={"lr": 1e-3}, loss={"consistency_weight": 0.0})

    class Context:
        finetune = {"lr": 0.01, "epochs": 6}

    assert method.schedule(Context()) == {"lr": 1e-3, "epochs": 6}
    method.check("full_finetune", ["lr", "epochs"], ["consistency_weight"])
    with pytest.raises(
        ValueError, match=r"full_finetune.finetune sets unknown settings \['lr'\]; known: epochs"
    ):
        method.check("full_finetune", ["epochs"], ["consistency_weight"])
    with pytest.raises(ValueError, match=r"random.loss sets unknown settings"):
        LayerFinetune(loss={"learning_rate": 1.0}).check("random", ["lr"], ["clean_weight"])


def test_mean_results_averages_shared_numbers_and_drops_traces():
    from ipg_gnn.repair.report import mean_results

    runs = [
        {"clean_acc": 0.9, "adv_acc": {"pgd": 0.2}, "history": [{"step": 1}], "params_changed": 3},
        {"clean_acc": 0.8, "adv_acc": {"pgd": 0.5}, "history": [{"step": 2}], "params_changed": 6},
    ]
    mean = mean_results([{**r, "draw": d} for d, r in enumerate(runs)])  # draw numbers: labels
    assert set(mean) == {"clean_acc", "adv_acc", "params_changed"}
    assert mean["clean_acc"] == pytest.approx(0.85) and mean["params_changed"] == 4.5
    assert mean["adv_acc"] == pytest.approx({"pgd": 0.35})


def test_model_result_finds_a_draw_by_its_number():
    """A job of draws 2 and 3 (`first_draw=2`) and a job of the lone draw 3 name their models
    `random_2`, `random_3`: the tools reading them get that draw's numbers, not a position's."""
    from ipg_gnn.repair.report import model_result

    split = {"baselines": {"random": {"draws": [{"draw": 2, "x": 2}, {"draw": 3, "x": 3}]}}}
    assert model_result(split, "random_3")["x"] == 3 and model_result(split, "random")["x"] == 2
    assert model_result({"baselines": {"random": {"draw": 3, "x": 3}}}, "random_3")["x"] == 3
    with pytest.raises(KeyError, match="no model 'random_0'"):
        model_result(split, "random_0")


def test_flat_metrics_keeps_scores_and_drops_budgets_counts_and_traces():
    from ipg_gnn.repair.report import flat_metrics

    report = {
        "train_dir": "/runs/r1",
        "n_test": 30,
        "after": {
            "clean_acc": 0.9,
            "adv_acc": {"pgd": 0.25},
            "eps": {"pgd": 0.15},
            "history": [{"step": 10, "val_clean_acc": 0.8}],
            "val": {"n": 8, "clean_acc": 0.875},
            "params_changed": 702,
        },
        "plan": {"level": "node", "targets": {"net.3": 2}},
    }
    assert flat_metrics(report) == {
        "n_test": 30.0,
        "after/clean_acc": 0.9,
        "after/adv_acc/pgd": 0.25,
        "after/val/clean_acc": 0.875,
        "after/params_changed": 702.0,
        "plan/targets/net.3": 2.0,
    }


class CrossEntropy:
    """A deterministic repair loss for look-ahead checks (the adversarial one crafts randomly)."""

    def attach(self, model):
        import contextlib

        return contextlib.nullcontext()

    def __call__(self, model, batch, step):
        return torch.nn.functional.cross_entropy(model(batch.x), batch.y)


def test_lookahead_gain_measures_the_loss_fall_of_adapting_a_copy(trained_default):
    from ipg_gnn.repair.lookahead import lookahead_gain

    images = trained_default["splits"].images(trained_default["data"], "repair")
    train, val = images.subset(range(0, len(images), 2)), images.subset(range(1, len(images), 2))
    torch.manual_seed(0)
    fresh = MLP((1, 28, 28), 10, (32,)).eval()
    snapshot = {k: v.clone() for k, v in fresh.state_dict().items()}
    none = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in fresh.named_parameters()}
    with pytest.raises(ValueError, match="allow no parameter to change"):
        lookahead_gain(fresh, none, train, val, CrossEntropy(), steps=5, batch_size=32)
    every = all_masks(fresh)
    learned = lookahead_gain(
        fresh, every, train, val, CrossEntropy(), steps=5, lr=1e-2, batch_size=32
    )
    by_hand = torch.nn.functional.cross_entropy(fresh(val.x), val.y)
    assert learned["before"] == pytest.approx(float(by_hand), rel=1e-5)
    assert learned["gain"] == pytest.approx(1 - learned["after"] / learned["before"])
    assert learned["gain"] > 0.1, learned
    # A copy was adapted: the model itself is untouched.
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in snapshot.items())
    with pytest.raises(ValueError, match="needs 3200 inputs"):
        lookahead_gain(fresh, every, train, val, CrossEntropy(), steps=100, batch_size=32)


def test_plan_quality_scores_each_explainer_against_random_plans(tmp_path):
    from ipg_gnn.jobs.plan_quality import run_plan_quality

    tiny_train_run(tmp_path)
    cfg = compose_config(
        "plan_quality",
        tmp_path,
        [
            "attack=[fgsm,pgd]",
            "logger=none",
            "~study.explainers.saliency",
            "study.explainers.paired_ig.steps=4",
            "study.explainers.loss_gradient.batch_size=8",
            "study.fractions=[0.1,0.5]",
            "study.draws=2",
            "study.steps=2",
            "study.batch_size=8",
            "repair.layer=net.3",
            "objective.train_attack.art_attack.max_iter=3",
        ],
    )
    result = run_plan_quality(cfg)
    assert set(result["explainers"]) == {"flow_difference", "paired_ig", "loss_gradient"}
    for row in result["explainers"].values():
        assert len(row["gain"]) == len(row["random_mean"]) == 2
        assert all(abs(g) < 1 for g in row["gain"])
    for name in ("paired_ig", "loss_gradient"):
        assert "spearman_halves" in result["explainers"][name]["stability"]
    run = tmp_path / "run"
    assert json.loads((run / "plan_quality.json").read_text())["fractions"] == [0.1, 0.5]
    assert (run / "plan_quality.png").stat().st_size > 10_000

    # The detector's graphs hold no input nodes, so paired IG cannot plan the first layer's
    # single weights: the study records why and still scores the flow plan.
    cfg = compose_config(
        "plan_quality",
        tmp_path / "edge",
        [
            f"train_dir={tmp_path / 'logs' / 'train' / 'r1'}",
            "attack=[fgsm,pgd]",
            "logger=none",
            "~study.explainers.saliency",
            "~study.explainers.loss_gradient",
            "study.explainers.paired_ig.steps=2",
            "study.fractions=[0.1]",
            "study.draws=1",
            "study.steps=2",
            "study.batch_size=8",
            "repair.layer=net.1",
            "repair.level=edge",
            "objective.train_attack.art_attack.max_iter=3",
        ],
    )
    result = run_plan_quality(cfg)["explainers"]
    assert "captured incoming edges" in result["paired_ig"]["error"]
    assert len(result["flow_difference"]["gain"]) == 1
    assert (tmp_path / "edge" / "run" / "plan_quality.png").is_file()
    with pytest.raises(ConfigError, match="set repair.k=null"):
        run_plan_quality(compose_config("plan_quality", tmp_path / "k", ["repair.k=3"]))
