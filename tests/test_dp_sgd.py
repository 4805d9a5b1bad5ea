"""DP-SGD fine-tuning of the whole model (opacus), the privacy repair baseline: on sklearn's
digits (8x8, 10 classes) with a small MLP trained for a few epochs."""

from __future__ import annotations

import io

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

# First: importing ipg_gnn.plan before ipg_gnn.objectives hits an import cycle (graphs ->
# objectives.membership -> detect -> graphs) that predates this test.
import ipg_gnn.objectives  # noqa: F401
from ipg_gnn.data import digits as digits_source
from ipg_gnn.errors import ConfigError
from ipg_gnn.plan import RepairPlan
from ipg_gnn.provenance import trace
from ipg_gnn.repair import DPSGDFinetune, RepairContext
from ipg_gnn.repair.private import default_delta
from ipg_gnn.repair.report import markdown_report
from ipg_gnn.runs.keys import model_fingerprint
from ipg_gnn.targets import MLP, accuracy
from tests.test_repair_mechanisms import Objective


@pytest.fixture(scope="module")
def digits():
    """A 64-32-10 MLP trained 30 full-batch Adam steps on 1,000 digits (eval mode), the other
    797 as fine-tuning (597) and validation (200) parts."""
    images = digits_source().train
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, widths=(32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = images.subset(range(1000))
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x), train.y).backward()
        optimizer.step()
    return model.eval(), images.subset(range(1000, 1597)), images.subset(range(1597, 1797))


def context(model, fine_tune, val, **finetune):
    schedule = {"epochs": 2, "lr": 1e-3, "batch_size": 64, "tolerance": 0.01, "progress": False}
    return RepairContext(
        model,
        RepairPlan(model_fingerprint(model), "node", {}, {}),
        trace(model, fine_tune.x[:1]),
        fine_tune,
        val,
        Objective(),
        {**schedule, **finetune},
        seed=0,
    )


def test_dp_sgd_changes_every_parameter_and_reports_the_accountants_epsilon(digits):
    model, fine_tune, val = digits
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert accuracy(model, val) > 0.8
    repaired, info = DPSGDFinetune(noise_multiplier=1.0, max_grad_norm=1.0)(
        context(model, fine_tune, val)
    )
    assert type(repaired) is MLP and not any(
        hasattr(m, "_forward_hooks") and m._forward_hooks for m in repaired.modules()
    )
    for name, p in repaired.named_parameters():
        assert not torch.equal(p, before[name]), name  # every tensor moved
        assert torch.equal(model.get_parameter(name), before[name])  # the original untouched
    total = sum(p.numel() for p in before.values())
    assert info["dof"] == info["params_allowed"] == total
    assert info["params_changed"] > 0.9 * total
    dp = info["privacy"]
    # 597 inputs at batch 64: 10 batches per epoch, sample rate 1/10, 20 steps; delta 1e-3.
    assert dp["delta"] == default_delta(597) == 1e-3
    assert dp["sample_rate"] == pytest.approx(0.1) and dp["steps"] == 20
    assert (dp["noise_multiplier"], dp["max_grad_norm"]) == (1.0, 1.0)
    accountant = PRVAccountant()
    accountant.history = [(1.0, 0.1, 20)]
    assert 0 < dp["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3))
    assert [h["step"] for h in info["history"]] == [10, 20]
    # Plain numbers only: a resumed repair reads a finished draw back with weights_only=True.
    saved = io.BytesIO()
    torch.save(info, saved)
    saved.seek(0)
    assert torch.load(saved, weights_only=True)["privacy"]["epsilon"] == dp["epsilon"]
    assert accuracy(repaired, val) > 0.5  # chance is 0.1
    # Reproducible: the same seed draws the same batches and noise.
    again, _ = DPSGDFinetune()(context(model, fine_tune, val))
    assert all(
        torch.equal(p, q) for p, q in zip(repaired.parameters(), again.parameters(), strict=True)
    )


def test_more_noise_spends_less_epsilon_and_a_target_epsilon_is_met(digits):
    model, fine_tune, val = digits
    ctx = context(model, fine_tune, val, epochs=1)
    spent = [
        DPSGDFinetune(noise_multiplier=s, accountant="rdp")(ctx)[1]["privacy"]["epsilon"]
        for s in (0.8, 2.0)
    ]
    assert spent[0] > spent[1] > 0
    _, info = DPSGDFinetune(target_epsilon=3.0, delta=1e-4, accountant="rdp")(ctx)
    dp = info["privacy"]
    rdp = RDPAccountant()
    rdp.history = [(dp["noise_multiplier"], 0.1, 10)]
    assert dp["delta"] == 1e-4 and dp["epsilon"] == pytest.approx(rdp.get_epsilon(1e-4))
    assert 2.5 < dp["epsilon"] <= 3.0 + 1e-6


def test_models_opacus_cannot_train_and_bad_settings_are_refused(digits):
    _, fine_tune, val = digits
    bn = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 10)
    ).eval()
    with pytest.raises(ConfigError, match=r"^repair.methods.dp_sgd: .*BatchNorm1d \(2\)"):
        DPSGDFinetune().check_model("repair.methods.dp_sgd", bn)
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        DPSGDFinetune()(context(bn, fine_tune, val))
    DPSGDFinetune().check_model("repair.methods.dp_sgd", MLP((1, 8, 8), 10, widths=(4,)))

    known = ["epochs", "lr", "batch_size", "tolerance", "check_every"]
    DPSGDFinetune(finetune={"epochs": 3, "lr": 1e-2}).check("dp_sgd", known, ["clean_weight"])
    with pytest.raises(ConfigError, match=r"dp_sgd.finetune sets unknown settings \['epoch'\]"):
        DPSGDFinetune(finetune={"epoch": 3}).check("dp_sgd", known, [])
    with pytest.raises(ConfigError, match=r"\['tolerance'\]; known: epochs, lr, batch_size$"):
        DPSGDFinetune(finetune={"tolerance": 0.5}).check("dp_sgd", known, [])
    with pytest.raises(ConfigError, match="takes no loss settings"):
        DPSGDFinetune(loss={"clean_weight": 1.0}).check("dp_sgd", known, ["clean_weight"])
    with pytest.raises(ConfigError, match="epochs >= 1"):
        DPSGDFinetune()(context(MLP((1, 8, 8), 10, widths=(4,)), fine_tune, val, epochs=0))
    for bad in (
        {"max_grad_norm": 0.0},
        {"delta": 1.0},
        {"target_epsilon": -1},
        {"accountant": "x"},
    ):
        with pytest.raises(ConfigError):
            DPSGDFinetune(**bad)


def test_report_shows_epsilon_only_when_a_row_has_one():
    row = {"clean_acc": 0.9, "params_changed": 10, "params_changed_fraction": 1.0, "dof": 10}
    report = {
        "n_test": 5,
        "plan": {"level": "node", "explainer": "x", "targets": {}},
        "before": {"clean_acc": 0.95},
        "after": row,
        "baselines": {"dp_sgd": {**row, "privacy": {"epsilon": 2.345, "delta": 1e-4}}},
    }
    text = markdown_report(report, Objective())
    assert (
        "| DP epsilon (delta) |" in text
        and "| dp_sgd | 90.00% | 10 (100.00%) | 10 | - | 2.35 (1e-04) |" in text
    )
    assert "| original | 95.00% | - | - | - | - |" in text
    plain = markdown_report({**report, "baselines": {}}, Objective())
    assert (
        "epsilon" not in plain and "| targeted repair | 90.00% | 10 (100.00%) | 10 | - |" in plain
    )


def test_repair_job_runs_dp_sgd_as_a_baseline(tmp_path):
    """repair.py with `repair.baselines=[dp_sgd]` on a tiny train run: the row, its epsilon
    column, its checkpoint (about 15 s)."""
    from ipg_gnn.jobs.repair import run_repair
    from tests.conftest import compose_config
    from tests.test_repair import tiny_train_run

    tiny_train_run(tmp_path)
    cfg = compose_config(
        "repair",
        tmp_path,
        [
            "attack=[fgsm]",
            "logger=none",
            "repair.val_evaluations=[fgsm]",
            "repair.layer=net.3",
            "repair.k=2",
            "repair.finetune.epochs=1",
            "repair.baselines=[dp_sgd]",
            "objective.train_attack.art_attack.max_iter=3",
            "+repair.methods.dp_sgd.finetune.epochs=2",
            "repair.methods.dp_sgd.noise_multiplier=2.0",
        ],
    )
    report = run_repair(cfg)
    row = report["baselines"]["dp_sgd"]
    assert row["privacy"]["noise_multiplier"] == 2.0 and row["privacy"]["steps"] == 2
    assert row["privacy"]["epsilon"] > 0 and row["dof"] == row["params_allowed"]
    assert "| DP epsilon (delta) |" in (tmp_path / "run" / "repair_report.md").read_text()
    assert (tmp_path / "run" / "models" / "dp_sgd.pt").is_file()
