"""GNN detectors, baselines and metrics on real IPGs of the trained default MLP."""

from __future__ import annotations

import functools

import lightning as L
import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from torch_geometric.explain import Explainer, GNNExplainer

from ipg_gnn.attacks import Attack
from ipg_gnn.detect import (
    CONVS,
    LID,
    Activations,
    FlatActivations,
    IPGClassifier,
    Mahalanobis,
    detection_metrics,
    evaluate_scores,
    fit_detector,
    score_graphs,
    tpr_at_fpr,
)
from ipg_gnn.graphs import IPGDataset, build_store, prepare_capture
from ipg_gnn.objectives import AttackContrast
from ipg_gnn.provenance import CaptureConfig
from ipg_gnn.runs.checkpoints import CheckpointMismatchError, load_checkpoint, save_checkpoint

SIZES = {"ipg_train": 250, "ipg_val": 100, "test": 150}


@pytest.fixture(scope="module")
def ipgs(trained_default, tmp_path_factory):
    """Benign + FGSM IPGs of a stratified slice of each detector split."""
    d = trained_default
    model, root = d["model"], tmp_path_factory.mktemp("ipgs")
    calibration = d["splits"].images(d["data"], "ipg_train").x[::4]
    capturer, _ = prepare_capture(model, root, CaptureConfig(), calibration)
    attack = Attack("fgsm", functools.partial(FastGradientMethod, eps=0.15), progress=False)
    fgsm = AttackContrast("fgsm", attack, "test")
    out = {}
    for split, n in SIZES.items():
        every = len(d["splits"].indices[split]) // n
        images = d["splits"].images(d["data"], split).subset(range(0, every * n, every))
        index = d["splits"].indices[split][: every * n : every]
        for name, contrast in (("benign", None), ("fgsm", fgsm)):
            directory = root / f"{split}-{name}"
            build_store(
                capturer, model, images, index, directory, split, name, contrast, progress=False
            )
        out[split] = IPGDataset(root, [f"{split}-benign", f"{split}-fgsm"])
    return out


def _quiet_trainer(max_epochs: int):
    return lambda callbacks: L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )


@pytest.mark.parametrize("conv", CONVS)
def test_each_gnn_learns_to_detect_fgsm(conv, ipgs, tmp_path):
    L.seed_everything(0, verbose=False)
    model = IPGClassifier(ipgs["ipg_train"].topology.num_nodes, conv=conv)
    info = fit_detector(
        model, ipgs["ipg_train"], ipgs["ipg_val"], _quiet_trainer(8), tmp_path, batch_size=32
    )
    assert 0.5 < info["best_val_auroc"] <= 1.0 and (tmp_path / "best.ckpt").is_file()
    scores = score_graphs(model, ipgs["test"])
    result = evaluate_scores(scores, ipgs["test"].tensors, ipgs["test"].populations)
    # 500 training graphs and 8 epochs: well above chance (the full default run reaches 0.99).
    assert result["all"]["auroc"] > 0.8 and result["per_population"]["fgsm"]["n"] == 300


@pytest.mark.parametrize("conv", CONVS)
def test_pyg_explainer_masks_the_edges_of_each_gnn(conv, ipgs):
    torch.manual_seed(0)
    model = IPGClassifier(ipgs["test"].topology.num_nodes, conv=conv).eval()
    graph = ipgs["test"][200]
    explainer = Explainer(
        model,
        algorithm=GNNExplainer(epochs=3),
        explanation_type="model",
        edge_mask_type="object",
        node_mask_type="object",
        model_config={"mode": "binary_classification", "task_level": "graph", "return_type": "raw"},
    )
    explanation = explainer(graph.x, graph.edge_index, edge_attr=graph.edge_attr)
    assert explanation.edge_mask.shape == (graph.edge_index.shape[1],)
    assert explanation.node_mask.shape == (graph.num_nodes, 1)
    assert float(explanation.edge_mask.std()) > 0


def test_baselines_detect_fgsm_on_the_same_graphs(ipgs):
    train, test = Activations.of(ipgs["ipg_train"]), Activations.of(ipgs["test"])
    assert [a.shape[1] for a in train.layers] == [350, 50, 10]
    for baseline in (Mahalanobis(), LID(k=10, reference_size=200), FlatActivations()):
        scores = baseline.fit(train).score(test)
        auroc = detection_metrics(scores, ipgs["test"].labels)["auroc"]
        assert auroc > 0.8, (type(baseline).__name__, auroc)


def test_mahalanobis_feature_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    layer = rng.normal(size=(60, 3))
    labels = np.repeat([0, 1, 2], 20)
    layer[labels == 1] += 3.0
    acts = Activations([layer], np.zeros(60, dtype=int), labels)
    detector = Mahalanobis()
    detector.fit_features(acts)
    probe = rng.normal(size=(5, 3))
    got = detector.features([torch.from_numpy(probe)])[:, 0]
    prec, means = detector.precisions[0].numpy(), detector.means[0].numpy()
    expected = [-min((p - m) @ prec @ (p - m) for m in means) for p in probe]
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_metrics_match_a_hand_computation():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    m = detection_metrics(scores, labels)
    assert m["auroc"] == pytest.approx(0.75) and m["accuracy"] == pytest.approx(0.75)
    assert tpr_at_fpr(scores, labels, 0.05) == pytest.approx(0.5)
    assert detection_metrics(scores, torch.zeros(4)) is None
    meta = {
        "is_contrast": torch.tensor([0, 0, 1, 1, 1, 1]),
        "success": torch.tensor([0, 0, 1, 0, 1, 1]),
        "population_id": torch.tensor([0, 0, 1, 1, 2, 2]),
    }
    report = evaluate_scores(
        torch.tensor([0.1, 0.2, 0.9, 0.15, 0.6, 0.05]), meta, ["benign", "a", "b"]
    )
    # Attack a: adversarial 0.9 and 0.15 against benign 0.1 and 0.2, 3 of 4 pairs ordered.
    per = report["per_population"]
    assert set(per) == {"a", "b"} and per["a"]["auroc"] == pytest.approx(0.75)
    assert per["a"]["successful_only"]["auroc"] == pytest.approx(1.0)
    assert per["b"]["n"] == 4 and report["all"]["n_contrast"] == 4


def test_detector_refuses_bad_input(ipgs, tmp_path):
    num_nodes = ipgs["test"].topology.num_nodes
    model = IPGClassifier(num_nodes)
    graph = ipgs["test"][0]
    with pytest.raises(ValueError, match="whole number of IPGs"):
        model(graph.x[:-1], graph.edge_index, graph.edge_attr)
    benign_only = IPGDataset(ipgs["test"].root_dir, ["test-benign"])
    with pytest.raises(ValueError, match="both reference and contrast graphs"):
        fit_detector(model, benign_only, ipgs["ipg_val"], _quiet_trainer(1), tmp_path)
    with pytest.raises(ValueError, match="unknown GNN layer"):
        IPGClassifier(num_nodes, conv="gcn")
    arch = {"_target_": "ipg_gnn.detect.IPGClassifier", "num_nodes": num_nodes, "hidden": 32}
    save_checkpoint(tmp_path / "detector.pt", model, arch)
    with pytest.raises(CheckpointMismatchError, match="hidden"):
        load_checkpoint(tmp_path / "detector.pt", {**arch, "hidden": 64})
