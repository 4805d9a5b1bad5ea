"""IPG datasets: build, load with PyG, resume after an interruption, refuse other models."""

from __future__ import annotations

import functools

import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from torch_geometric.loader import DataLoader

from ipg_gnn.attacks import Attack
from ipg_gnn.data import Images
from ipg_gnn.graphs import (
    GraphStore,
    IPGDataset,
    IPGStoreError,
    Topology,
    build_store,
    prepare_capture,
)
from ipg_gnn.objectives import AttackContrast
from ipg_gnn.provenance import CaptureConfig, IPGCapture
from ipg_gnn.runs.io import ArtifactError
from ipg_gnn.runs.keys import model_fingerprint
from ipg_gnn.targets import MLP


@pytest.fixture(scope="module")
def setup(trained_default):
    d = trained_default
    images = d["splits"].images(d["data"], "ipg_train").subset(range(0, 1000, 20))  # 50 inputs
    index = d["splits"].indices["ipg_train"][::20]
    pgd = Attack(
        "pgd",
        functools.partial(
            ProjectedGradientDescent,
            norm="inf",
            eps=0.15,
            eps_step=0.02,
            max_iter=10,
            num_random_init=1,
            verbose=False,
        ),
        progress=False,
    )
    return d["model"], images, index, AttackContrast("pgd", pgd, "test")


def _build(root, model, images, index, attack, mode="static"):
    capturer, _ = prepare_capture(model, root, CaptureConfig(mode=mode, k=4), images.x[:30])
    build_store(
        capturer, model, images, index, root / "s-benign", "s", "benign", None, 20, progress=False
    )
    build_store(
        capturer, model, images, index, root / "s-pgd", "s", "pgd", attack, 20, progress=False
    )
    return IPGDataset(root, ["s-benign", "s-pgd"], fingerprint=model_fingerprint(model))


def test_built_dataset_loads_with_pyg_and_carries_metadata(setup, tmp_path):
    model, images, index, pgd = setup
    ds = _build(tmp_path, model, images, index, pgd)
    assert len(ds) == 100 and ds.labels.tolist() == [0] * 50 + [1] * 50
    assert ds.populations == ["benign", "pgd"] and ds.contrasts == ["pgd"]
    g = ds[60]
    assert g.x.shape == (410, 4) and g.edge_attr.shape == (4 * (50 + 10), 2)
    assert int(g.source_index) == int(index[10]) and int(g.true_label) == int(images.y[10])
    t = ds.tensors
    right = torch.cat([t["pred"][:50], t["pred"][:50]]) == t["true_label"]  # before the attack
    assert torch.equal(t["success"], t["is_contrast"] & right & (t["pred"] != t["true_label"]))
    assert float(t["success"][50:].float().mean()) > 0.8  # PGD at eps 0.15 fools the MLP
    # Benign and adversarial graphs of one input differ, on the same topology.
    assert not torch.allclose(ds[10].x, ds[60].x)
    batch = next(iter(DataLoader(ds, batch_size=16, shuffle=True)))
    assert batch.num_graphs == 16 and batch.x.shape == (16 * 410, 4)
    assert batch.y.shape == (16,) and batch.edge_index.max() < 16 * 410


def test_dynamic_mode_stores_per_graph_edges(setup, tmp_path):
    model, images, index, pgd = setup
    ds = _build(tmp_path, model, images.subset(range(10)), index[:10], pgd, mode="dynamic")
    assert ds.dynamic and ds.topology.edge_index is None
    assert ds[3].edge_index.shape == (2, 4 * 60) and not torch.equal(
        ds[3].edge_index, ds[13].edge_index
    )


def test_interrupted_build_resumes_without_duplicates_or_losses(setup, tmp_path, monkeypatch):
    model, images, index, pgd = setup
    reference = _build(tmp_path / "straight", model, images, index, pgd)
    root = tmp_path / "interrupted"
    capturer, _ = prepare_capture(model, root, CaptureConfig(k=4), images.x[:30])
    calls = {"n": 0}
    original = IPGCapture.__call__

    def dies_on_second_shard(self, inputs, progress=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, inputs, progress)

    monkeypatch.setattr(IPGCapture, "__call__", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build_store(
            capturer, model, images, index, root / "s-pgd", "s", "pgd", pgd, 20, progress=False
        )
    store = GraphStore(root / "s-pgd")
    assert sorted(p.name for p in store.directory.iterdir()) == [
        "manifest.json",
        "shard_00000.pt",
        "shard_00000.sha256",
    ]
    assert not store.complete()
    with pytest.raises(IPGStoreError, match=r"unfinished or damaged \(missing or bad: shard_00001"):
        store.load()
    monkeypatch.setattr(IPGCapture, "__call__", original)
    capturer, _ = prepare_capture(model, root, CaptureConfig(k=4), images.x[:30])
    build_store(
        capturer, model, images, index, root / "s-benign", "s", "benign", None, 20, progress=False
    )
    build_store(capturer, model, images, index, root / "s-pgd", "s", "pgd", pgd, 20, progress=False)
    resumed = IPGDataset(root, ["s-benign", "s-pgd"])
    assert resumed.tensors["source_index"].tolist() == reference.tensors["source_index"].tolist()
    for key in reference.tensors:
        assert torch.equal(resumed.tensors[key], reference.tensors[key]), key


def test_other_model_and_other_settings_are_refused(setup, tmp_path):
    model, images, index, pgd = setup
    _build(tmp_path, model, images.subset(range(10)), index[:10], pgd)
    other = MLP((1, 28, 28), 10)
    with pytest.raises(IPGStoreError, match="captured from model"):
        IPGDataset(tmp_path, ["s-benign"], fingerprint=model_fingerprint(other))
    with pytest.raises(IPGStoreError, match="captured from model"):
        prepare_capture(other, tmp_path, CaptureConfig(k=4), images.x[:5])
    capturer, _ = prepare_capture(model, tmp_path, CaptureConfig(k=4), images.x[:5])
    with pytest.raises(ValueError, match="empty"):
        build_store(capturer, model, images.subset([]), index[:0], tmp_path / "e", "e", "benign")
    assert Topology.load(tmp_path).node_table()[0] == ("net.1", 0)


def test_stores_of_other_inputs_or_settings_and_damaged_files_are_rebuilt(setup, tmp_path):
    model, images, index, _ = setup
    part = images.subset(range(10))
    capturer, _ = prepare_capture(model, tmp_path, CaptureConfig(k=4), images.x[:5])
    store = GraphStore(tmp_path / "s-benign")

    def build(inputs: Images, shard_size: int = 5) -> dict:
        directory = store.directory
        build_store(capturer, model, inputs, index[:10], directory, "s", "benign", None, shard_size)
        return store.load()

    first = build(part)
    # Same settings, other inputs (every pixel inverted): rebuilt, never reused.
    inverted = build(Images(1 - part.x, part.y))
    assert not torch.equal(first["x"], inverted["x"])
    # Other settings: rebuilt (one shard of 10; batched float32 sums may differ in the last bits).
    torch.testing.assert_close(build(part, shard_size=10)["x"], first["x"])
    assert store.manifest()["num_shards"] == 1
    build(part)
    shard = store.shard_path(1)
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(IPGStoreError, match="shard_00001.pt"):
        store.load()
    assert torch.equal(build(part)["x"], first["x"])  # the damaged shard is built again
    store.manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is damaged"):
        store.manifest()
    assert torch.equal(build(part)["x"], first["x"])
    (tmp_path / "topology.pt").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="topology.pt is damaged"):
        Topology.load(tmp_path)
    prepare_capture(model, tmp_path, CaptureConfig(k=4), images.x[:5])  # chosen again
    assert Topology.load(tmp_path).num_nodes == 410
