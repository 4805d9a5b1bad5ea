"""Target models: traceable, accurate after a short run, cached, and protected from mismatch."""

from __future__ import annotations

import pytest
import torch
import torch.fx

from ipg_gnn.jobs import stages
from ipg_gnn.runs.checkpoints import CheckpointMismatchError, load_checkpoint, save_checkpoint
from ipg_gnn.runs.keys import target_cache_key
from ipg_gnn.runs.train_run import target_arch
from ipg_gnn.targets import MLP, SmallCNN, SmallResNet, accuracy


@pytest.mark.parametrize(
    "cls, shape", [(MLP, (1, 28, 28)), (SmallCNN, (1, 28, 28)), (SmallResNet, (3, 32, 32))]
)
def test_models_trace_with_fx_and_match_eager(cls, shape):
    torch.manual_seed(0)
    model = cls(shape, 10).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.rand(4, *shape)
    assert traced(x).shape == (4, 10)
    assert torch.allclose(traced(x), model(x), atol=1e-6)


def test_resnet_trace_has_residual_add():
    traced = torch.fx.symbolic_trace(SmallResNet((1, 28, 28), 10))
    adds = [n for n in traced.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 3


def test_default_mlp_is_784_350_50_10():
    sizes = [
        (m.in_features, m.out_features)
        for m in MLP((1, 28, 28), 10).modules()
        if isinstance(m, torch.nn.Linear)
    ]
    assert sizes == [(784, 350), (350, 50), (50, 10)]


def test_default_mlp_reaches_88_percent_on_test_split(trained_default):
    d = trained_default
    acc = accuracy(d["model"], d["splits"].images(d["data"], "test"))
    assert acc >= 0.88, acc


def test_cached_checkpoint_is_reused_without_training(trained_default, monkeypatch):
    d = trained_default
    assert d["origin"]["origin"] == "trained"

    def no_training(*args, **kwargs):
        raise AssertionError("the target was trained a second time")

    monkeypatch.setattr(stages, "train_target", no_training)
    model, origin = stages.obtain_target(d["cfg"], d["data"], d["splits"], d["objective"])
    assert origin == {**d["origin"], "origin": "cache"}
    for a, b in zip(model.state_dict().values(), d["model"].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_changed_training_config_changes_cache_key(trained_default):
    cfg = trained_default["cfg"].copy()
    arch = target_arch(cfg, trained_default["data"])
    key = target_cache_key(cfg, arch, "data")
    cfg.target.train.epochs = 1
    assert target_cache_key(cfg, arch, "data") != key
    cfg = trained_default["cfg"].copy()
    cfg.trainer.enable_progress_bar = True
    assert target_cache_key(cfg, arch, "data") == key
    assert target_cache_key(cfg, arch, "other data") != key


def test_checkpoint_of_other_architecture_is_refused(tmp_path):
    arch = {
        "_target_": "ipg_gnn.targets.MLP",
        "widths": [20],
        "input_shape": [1, 8, 8],
        "num_classes": 10,
    }
    model = MLP((1, 8, 8), 10, widths=[20])
    path = save_checkpoint(tmp_path / "t.pt", model, arch)
    loaded = load_checkpoint(path, arch)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(CheckpointMismatchError, match="widths"):
        load_checkpoint(path, {**arch, "widths": [30]})
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointMismatchError, match="not an ipg-gnn checkpoint"):
        load_checkpoint(tmp_path / "other.pt", arch)
