"""Label node features (`ipg.label_features`): set exactly on the true class's output unit of
each graph, and a GNN with them tells apart two populations that differ only in how the label
relates to the activations, which it cannot without them."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ipg_gnn.data import Images
from ipg_gnn.detect import Activations, FlatActivations, IPGClassifier, fit_detector, score_graphs
from ipg_gnn.graphs import (
    LABEL_FEATURES,
    IPGDataset,
    IPGStoreError,
    build_store,
    label_node_features,
    prepare_capture,
)
from ipg_gnn.objectives.base import Contrast, Contrasted
from ipg_gnn.provenance import NODE_FEATURES, CaptureConfig
from ipg_gnn.targets import MLP, logit_confidence, predict

CLASSES = 3
SIZES = {"ipg_train": 300, "ipg_val": 100, "test": 200}


class Mislabelled(Contrast):
    """The selected inputs unchanged: the population differs from the reference only in its
    labels (the toy stores below give it labels the model does not predict)."""

    def __init__(self) -> None:
        super().__init__("mislabelled", "toy")

    def __call__(self, model, x, y, seed) -> Contrasted:
        return Contrasted(x, predict(model, x), torch.ones(len(x), dtype=torch.bool))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Per split, reference graphs of inputs labelled as the model predicts them and contrast
    graphs of other inputs of the same distribution labelled with another class."""
    torch.manual_seed(0)
    model = MLP((1, 1, 6), CLASSES, widths=(12,)).eval()
    root = tmp_path_factory.mktemp("label_ipgs")
    capturer, _ = prepare_capture(model, root, CaptureConfig(k=4), torch.randn(50, 1, 1, 6))
    for split, n in SIZES.items():
        for name, contrast in (("agree", None), ("mislabelled", Mislabelled())):
            x = torch.randn(n, 1, 1, 6)
            pred = predict(model, x)
            y = pred if contrast is None else (pred + torch.randint(1, CLASSES, (n,))) % CLASSES
            build_store(
                capturer,
                model,
                Images(x, y),
                torch.arange(n).numpy(),
                root / f"{split}-{name}",
                split,
                name,
                contrast,
                progress=False,
            )
    return root


def datasets(root, label_features: bool) -> dict[str, IPGDataset]:
    return {
        s: IPGDataset(root, [f"{s}-agree", f"{s}-mislabelled"], label_features=label_features)
        for s in SIZES
    }


def test_label_features_mark_the_true_class_output_unit(stores):
    plain, labelled = datasets(stores, False)["test"], datasets(stores, True)["test"]
    x, extra = labelled.tensors["x"], labelled.tensors["x"][:, :, len(NODE_FEATURES) :]
    assert x.shape[2] == len(NODE_FEATURES) + len(LABEL_FEATURES)
    assert torch.equal(x[:, :, : len(NODE_FEATURES)], plain.tensors["x"])
    output = labelled.topology.layers[-1]
    offset, y = output["offset"], labelled.tensors["true_label"]
    assert output["num_units"] == CLASSES
    # true_class: exactly one 1 per graph, on the true class's output unit, 0 everywhere else
    expected = torch.zeros(x.shape[:2])
    expected[torch.arange(len(y)), offset + y] = 1
    assert torch.equal(extra[:, :, 0], expected)
    # true_margin: z_y - z_k on output unit k, LiRA's z_y - logsumexp(z_other) on unit y
    z = plain.tensors["x"][:, offset : offset + CLASSES, 0].double()
    for i in (0, len(y) - 1):
        yi = int(y[i])
        for k in range(CLASSES):
            want = (
                logit_confidence(z[i : i + 1], y[i : i + 1])[0] if k == yi else z[i, yi] - z[i, k]
            )
            assert float(extra[i, offset + k, 1]) == pytest.approx(float(want), abs=1e-5)
    assert not extra[:, :offset].any() and not extra[:, offset + CLASSES :].any()
    # the graph the GNN gets carries them too, and so do the activation baselines
    assert torch.equal(labelled[3].x, x[3])
    assert Activations.of(labelled).layers[-1].shape == (len(y), CLASSES * len(LABEL_FEATURES))


def test_calibrated_margin_subtracts_the_reference_models_margins(stores):
    plain = datasets(stores, False)["test"]
    x, y, topology = plain.tensors["x"], plain.tensors["true_label"], plain.topology
    offset = topology.layers[-1]["offset"]
    logits = x[:, offset : offset + CLASSES, 0]
    own = label_node_features(x, y, topology, torch.stack([logits, logits]))
    assert own.shape[2] == len(LABEL_FEATURES) + 1 and not own[:, :, 2].any()
    shifted = label_node_features(x, y, topology, logits[None] - 2 * torch.eye(CLASSES)[y])
    # a reference model 2 logits less sure of the true class: all its true margins (and its
    # logit-scaled confidence) are 2 lower
    calibrated = shifted[:, offset : offset + CLASSES, 2]
    assert torch.allclose(calibrated, torch.full_like(calibrated, 2.0), atol=1e-4)
    calibrated_set = IPGDataset(
        stores, ["test-agree", "test-mislabelled"], reference_logits=logits[None]
    )
    assert calibrated_set.label_features and calibrated_set.tensors["x"].shape[2] == 7


def test_label_features_refuse_labels_the_output_layer_cannot_hold(stores):
    data = datasets(stores, False)["test"]
    with pytest.raises(IPGStoreError, match="do not index"):
        label_node_features(data.tensors["x"], data.tensors["true_label"] + CLASSES, data.topology)


def _gnn_test_auc(sets: dict[str, IPGDataset], tmp_path, pooling: list[str]) -> float:
    L.seed_everything(0, verbose=False)
    model = IPGClassifier(
        sets["test"].topology.num_nodes,
        node_features=sets["test"].tensors["x"].shape[2],
        node_embedding=0,
        pooling=pooling,
    )
    trainer = lambda callbacks: L.Trainer(  # noqa: E731
        max_epochs=15,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    fit_detector(model, sets["ipg_train"], sets["ipg_val"], trainer, tmp_path, 32, patience=15)
    test = sets["test"]
    return roc_auc_score(test.labels.numpy(), score_graphs(model, test).numpy())


def test_gnn_with_label_features_separates_what_it_cannot_without(stores, tmp_path):
    without = _gnn_test_auc(datasets(stores, False), tmp_path / "plain", ["mean", "max"])
    labelled = datasets(stores, True)
    with_label = _gnn_test_auc(labelled, tmp_path / "label", ["mean", "max", "true_class"])
    assert without < 0.65 < 0.9 < with_label
    # the flat baseline gets the same label information, and it is enough for it too
    flat = FlatActivations().fit(Activations.of(labelled["ipg_train"]))
    test = labelled["test"]
    assert roc_auc_score(test.labels.numpy(), flat.score(Activations.of(test)).numpy()) > 0.9


def test_true_class_readout_needs_label_features():
    with pytest.raises(ValueError, match="label node features"):
        IPGClassifier(10, node_features=len(NODE_FEATURES), pooling=["true_class"])
