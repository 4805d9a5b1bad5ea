"""The adaptive attacker: input -> IPG -> detector logit is differentiable and equals the
ordinary score, the adaptive PGD lowers a trained detector's logit while keeping its examples
misclassified, and `train.py detector.adaptive=true` writes the study."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from ipg_gnn.attacks import AdaptivePGD
from ipg_gnn.data import Images
from ipg_gnn.detect import (
    Activations,
    BaselineLogit,
    GNNLogit,
    InputLogit,
    IPGClassifier,
    Mahalanobis,
    layer_spans,
    score_graphs,
    threshold_at_fpr,
)
from ipg_gnn.detect.baselines import unit_activations
from ipg_gnn.graphs import IPGDataset, build_store, prepare_capture
from ipg_gnn.jobs.train import run_train
from ipg_gnn.provenance import CaptureConfig
from ipg_gnn.targets import MLP
from tests.conftest import compose_config


def _train_mlp(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    model = MLP((1, 8, 8), 10, widths=(32, 16))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """sklearn digits, a small MLP, static IPGs, and two detectors trained on benign vs PGD
    graphs of 300 inputs: the GNN (through the differentiable path) and Mahalanobis."""
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    model = _train_mlp(x[:1000], y[:1000])
    root = tmp_path_factory.mktemp("adaptive")
    capture, topology = prepare_capture(model, root, CaptureConfig(k=4), x[:200])
    pgd = AdaptivePGD(0.15, 0.03, steps=10, modes=("joint",), progress=False)
    xt, yt = x[1000:1300], y[1000:1300]
    benign, adversarial = capture(xt), capture(pgd(model, xt, yt).x_adv)
    nodes = torch.cat([benign.x, adversarial.x])
    contribution = torch.cat([benign.contribution, adversarial.contribution])
    labels = torch.cat([torch.zeros(len(xt)), torch.ones(len(xt))])
    gnn = IPGClassifier(topology.num_nodes, hidden=16, dropout=0.0, node_embedding=4)
    weight = topology.weight.expand_as(contribution)
    gnn.fit_normalization(nodes, torch.stack([contribution, weight], -1).reshape(-1, 2))
    gnn_logit = GNNLogit(gnn, topology.edge_index, topology.weight)
    optimiser = torch.optim.Adam(gnn.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(
            gnn_logit(nodes, contribution), labels
        )
        loss.backward()
        optimiser.step()
    gnn.eval()
    spans = layer_spans(topology.layers)
    acts = Activations(unit_activations(nodes, spans), labels, torch.cat([yt, yt]))
    detectors = {
        "GNN": gnn_logit,
        "mahalanobis": BaselineLogit(Mahalanobis().fit(acts), spans),
    }
    test = Images(x[1300:1400], y[1300:1400])
    index = np.arange(1300, 1400)
    build_store(capture, model, test, index, root / "test-benign", "test", "benign", None)
    return {
        "model": model,
        "capture": capture,
        "detectors": detectors,
        "test": test,
        "graphs": IPGDataset(root, ["test-benign"]),
    }


def test_differentiable_logit_equals_the_ordinary_score(world):
    x = world["test"].x.clone().requires_grad_(True)
    for name, detector in world["detectors"].items():
        logit = InputLogit(world["capture"], detector)(x)
        grad = torch.autograd.grad(logit.sum(), x)[0]
        assert float(grad.abs().sum()) > 0, name
        if name == "GNN":
            ordinary = score_graphs(detector.model, world["graphs"])
        else:
            ordinary = detector.detector.score(Activations.of(world["graphs"]))
        torch.testing.assert_close(
            logit.detach().sigmoid().double(), ordinary.double(), rtol=1e-4, atol=1e-5
        )


def test_straight_through_indicator_keeps_the_graphs_and_changes_only_the_gradient(world):
    x = world["test"].x.clone().requires_grad_(True)
    exact, smooth = (world["capture"].graph_tensors(x, t) for t in (None, 1.0))
    assert torch.equal(exact[0], smooth[0]) and torch.equal(exact[1], smooth[1])
    units = world["capture"].plan.layers[0].num_units  # the first layer's nodes
    grads = [torch.autograd.grad(g[0][:, :units, 2].sum(), x)[0] for g in (exact, smooth)]
    assert float(grads[0].abs().sum()) == 0 and float(grads[1].abs().sum()) > 0


@pytest.mark.parametrize("mode", ["joint", "two_phase"])
def test_adaptive_pgd_lowers_each_detectors_logit_and_stays_misclassified(world, mode):
    model, x, y = world["model"], world["test"].x, world["test"].y
    attack = AdaptivePGD(0.15, 0.015, steps=20, modes=(mode,), progress=False)
    plain = attack(model, x, y)
    assert plain.detector_logit is None and float(plain.success.float().mean()) > 0.5
    for name, detector in world["detectors"].items():
        scorer = InputLogit(world["capture"], detector)
        adaptive = attack(model, x, y, detector=scorer)
        with torch.no_grad():
            benign, before, after = scorer(x), scorer(plain.x_adv), scorer(adaptive.x_adv)
        # The logit kept with each example is the detector's logit of that very input.
        torch.testing.assert_close(adaptive.detector_logit, after.float(), rtol=1e-4, atol=1e-4)
        assert float((adaptive.x_adv - x).abs().max()) <= 0.15 + 1e-6
        both = plain.success & adaptive.success
        assert float(before[both].mean()) > float(benign.mean()), (name, "detects plain PGD")
        # Below the benign inputs' own mean: picking the lowest-logit iterate of a
        # classifier-only PGD (the detector term switched off) does not get there.
        assert float(after[both].mean()) < float(benign.mean()), (name, mode)
        # Lowering the detector's logit does not cost the misclassification.
        assert adaptive.success.sum() >= 0.9 * plain.success.sum(), (name, mode)


def test_threshold_at_fpr_flags_at_most_that_share_of_benign_scores():
    benign = torch.arange(200, dtype=torch.float32)
    threshold = threshold_at_fpr(benign, 0.05)
    assert float((benign > threshold).float().mean()) <= 0.05
    assert float((benign >= threshold).float().mean()) > 0.05 - 1e-9


def test_train_job_runs_the_adaptive_study(tmp_path):
    cfg = compose_config(
        "train",
        tmp_path,
        [
            "dataset=digits",
            "target.train.epochs=3",
            "gnn.train.max_epochs=1",
            "attack=[pgd]",
            "split.max_size={ipg_train:60,ipg_val:40,test:30}",
            "logger=none",
            "detector.transfer=false",
            "detector.adaptive=true",
            "detector.adaptive_study.max_inputs=12",
            "detector.adaptive_study.eps_scale=[1.0,2.0]",
            "detector.adaptive_study.adaptive_pgd.steps=2",
            "detector.adaptive_study.adaptive_pgd.progress=false",
        ],
    )
    result = run_train(cfg)["detection"]["adaptive"]
    run = tmp_path / "run"
    assert json.loads((run / "detector_report.json").read_text())["adaptive"] == result
    assert "Adaptive attacker (eps 0.15)" in (run / "detector_report.md").read_text()
    assert (run / "adaptive_eps.png").is_file()
    assert result["eps"] == [0.15, 0.3] and set(result["classifier_only"]) == {"0.15", "0.3"}
    assert set(result["detectors"]) == {"GNN", "mahalanobis", "lid", "flat"}
    for r in result["detectors"].values():
        assert r["val_fpr"] <= 0.05
        for m in r["by_eps"].values():
            assert 0 <= m["success"] <= 1 and 0 <= m["auroc"] <= 1


def test_adaptive_pgd_config_is_a_classifier_only_contrast_population(world, tmp_path):
    from ipg_gnn.jobs.stages import make_objective

    cfg = compose_config("train", tmp_path, ["attack=adaptive_pgd", "dataset=digits"])
    contrast = make_objective(cfg).contrasts()["adaptive_pgd"]
    x, y = world["test"].x[:20], world["test"].y[:20]
    result = contrast(world["model"], x, y, seed=0)
    assert float((result.x - x).abs().max()) <= cfg.dataset.eps + 1e-6
    assert bool(result.success.any())
