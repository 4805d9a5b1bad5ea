"""The Hydra configs compose, instantiate, and drive a tiny end-to-end train.py job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ipg_gnn.attacks import Attack
from ipg_gnn.graphs import IPGDataset
from ipg_gnn.jobs.stages import load_data, make_objective
from ipg_gnn.jobs.train import run_train
from ipg_gnn.runs.checkpoints import load_checkpoint
from ipg_gnn.runs.keys import model_fingerprint
from ipg_gnn.runs.train_run import target_arch
from tests.conftest import ROOT, compose_config

# A small train.py job: capped splits, two attacks, one training batch per Lightning fit.
TINY = [
    "+trainer.fast_dev_run=true",
    "attack=[fgsm,pgd]",
    "split.max_size={ipg_train:60,ipg_val:30,test:40}",
]


def test_train_job_end_to_end_with_offline_wandb(tmp_path):
    cfg = compose_config("train", tmp_path, [*TINY, "logger=wandb"])
    report = run_train(cfg)
    run = tmp_path / "run"
    attack = json.loads((run / "attack_report.json").read_text())
    assert attack == report["attack"] and set(attack["adv_acc"]) == {"fgsm", "pgd"}
    assert attack["n"] == 40 and attack["target"]["origin"] == "trained"
    assert "clean" in report["objective"].format_population_report(attack)
    ipgs = json.loads((run / "ipg_datasets.json").read_text())
    assert ipgs == report["ipg"] and set(ipgs["stores"]["test"]) == {"benign", "fgsm", "pgd"}
    target = load_checkpoint(run / "target.pt", target_arch(cfg, load_data(cfg, run)[0]))
    test = IPGDataset(
        ipgs["root"], list(ipgs["stores"]["test"].values()), fingerprint=model_fingerprint(target)
    )
    assert len(test) == 3 * 40 and test.populations == ["benign", "fgsm", "pgd"]
    # Adversarial accuracy in the report is read back from the graphs' own metadata.
    adv = test.tensors["is_contrast"] & (test.tensors["population_id"] == 1)
    expected = float((test.tensors["pred"][adv] == test.tensors["true_label"][adv]).float().mean())
    assert attack["adv_acc"]["fgsm"] == pytest.approx(expected)
    # Robust: right on the clean input and under every attack (stores share the input order).
    right = (test.tensors["pred"] == test.tensors["true_label"]).view(3, 40)
    assert attack["robust_acc"] == pytest.approx(float(right.all(0).float().mean()))
    assert attack["robust_acc"] <= min(attack["adv_acc"].values())
    det = json.loads((run / "detector_report.json").read_text())
    assert det == report["detection"]
    for key in ("auroc", "accuracy", "tpr_at_5fpr"):
        assert 0.0 <= det["test"][key] <= 1.0
    assert {"fgsm", "pgd"} == set(det["per_attack"]) and 0 <= det["per_attack"]["pgd"]["auroc"]
    assert set(det["baselines"]) == {"mahalanobis", "lid", "flat"}
    assert all(0.0 <= b["auroc"] <= 1.0 for b in det["baselines"].values())
    assert set(det["transfer"]) == {"fgsm", "pgd"} and set(det["transfer"]["pgd"]) == {
        "fgsm",
        "pgd",
    }
    assert det["n_graphs"] == {"ipg_train": 180, "ipg_val": 90, "test": 120}
    detector = load_checkpoint(run / "detector.pt", {**cfg.gnn.model, "num_nodes": 410})
    assert isinstance(detector, torch.nn.Module)
    assert "| GNN |" in (run / "detector_report.md").read_text()
    for png in ("roc_curves.png", "transfer_auroc.png", "ipg_benign.png", "ipg_diff_pgd.png"):
        assert (run / png).stat().st_size > 10_000
    assert list((run / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    # Every plot reached the W&B run, each under its own key.
    media = list((run / "wandb").glob("offline-run-*/files/media/images/plots/*.png"))
    assert any(p.name.startswith("roc_curves_") for p in media)
    assert any(p.name.startswith("transfer_auroc_") for p in media)


def test_train_job_needs_the_detector_splits(tmp_path):
    cfg = compose_config("train", tmp_path, ["ipg.splits=[ipg_train,test]"])
    with pytest.raises(ValueError, match="missing ipg_val"):
        run_train(cfg)


def test_two_job_multirun_with_the_submitit_local_launcher(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=submitit_local",
        "gnn=graphconv,gine",
        "attack=fgsm",
        "logger=none",
        TINY[0],
        TINY[2],
        "trainer.enable_progress_bar=false",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/*/detector_report.json"))
    assert len(reports) == 2
    assert sorted(json.loads(r.read_text())["detector"]["gnn"] for r in reports) == [
        "gine",
        "graphconv",
    ]


def test_every_attack_config_instantiates():
    cfg = compose_config("train", ROOT, ["attack=all"])
    attacks = make_objective(cfg).attacks
    names = {p.stem for p in (ROOT / "conf" / "attack").glob("*.yaml")}
    # `all` is every ART attack; adaptive_pgd (the detector study's attacker) is chosen alone.
    assert sorted(attacks) == sorted(names - {"all", "default", "eval", "adaptive_pgd"})
    assert all(isinstance(a, Attack) and a.name == n for n, a in attacks.items())
    assert attacks["pgd"].eps == cfg.dataset.eps == 0.15 and attacks["cw"].eps is None


EXPERIMENTS = sorted((ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_composes_with_the_app_it_names(path, tmp_path):
    # Each experiment's first comment line names its entry point; the config must compose there
    # and resolve (train.py's objective instantiate; repair.py's objective needs the train run's
    # dataset), so a renamed key or a broken nested default fails here.
    app = path.read_text().splitlines()[1].removeprefix("# ").split(".py")[0]
    assert app in {"train", "repair"}, f"{path.name} does not say which entry point it is for"
    cfg = compose_config(app, tmp_path, [f"experiment={path.stem}"])
    if app == "train":
        assert make_objective(cfg).noun
    else:
        assert OmegaConf.to_container(cfg.repair, resolve=True)["methods"]["targeted"]


def test_budget_sweep_experiment_is_net1_flow_with_the_chosen_loss(tmp_path):
    cfg = compose_config("repair", tmp_path, ["experiment=budget_sweep"])
    assert cfg.repair.layer == "net.1" and cfg.explainer._target_.endswith("FlowDifference")
    assert cfg.objective.loss.clean_weight == 10.0 and cfg.repair.finetune.lr == 3e-3
    assert list(cfg.repair.baselines) == ["random"] and cfg.repair.methods.random.draws == 4


@pytest.mark.parametrize("dataset", ["mnist_subset", "digits", "mnist", "fashion_mnist", "cifar10"])
@pytest.mark.parametrize("target", ["mlp", "cnn", "resnet"])
def test_dataset_and_target_configs_compose(dataset, target, tmp_path):
    cfg = compose_config("train", tmp_path, [f"dataset={dataset}", f"target={target}"])
    assert cfg.dataset.source._target_.startswith("ipg_gnn.data.")
    model = instantiate(cfg.target.model, input_shape=[1, 28, 28], num_classes=10)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_unknown_dataset_config_is_a_clear_error(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="mnist_subset"):
        compose_config("train", tmp_path, ["dataset=imagenet"])


def test_missing_data_files_error_from_config(tmp_path):
    from ipg_gnn.data import DatasetFileError

    cfg = compose_config("train", tmp_path, ["dataset=mnist", f"paths.data_dir={tmp_path}"])
    with pytest.raises(DatasetFileError, match="train-images-idx3-ubyte.gz"):
        load_data(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "splits.npz").exists()


def test_repair_without_train_run_is_a_clear_error(tmp_path):
    from ipg_gnn.jobs.repair import run_repair
    from ipg_gnn.runs.train_run import load_train_run

    with pytest.raises(FileNotFoundError, match="run `python train.py` first"):
        run_repair(compose_config("repair", tmp_path))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "splits.npz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing train_config.yaml"):
        load_train_run(tmp_path / "half")


def test_slurm_launcher_config_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.mem_gb) == ("gpu", 1, 32)
