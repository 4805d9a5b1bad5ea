"""The Hydra configs compose, instantiate, and drive a tiny end-to-end train.py job."""

from __future__ import annotations

import json

import pytest
from hydra.utils import instantiate

from ipg_gnn.attacks import ATTACKS, Attack
from ipg_gnn.checkpoints import load_checkpoint, model_fingerprint
from ipg_gnn.graphs import IPGDataset
from ipg_gnn.pipeline import (
    format_attack_table,
    load_data,
    make_attacks,
    run_train,
    target_arch,
)
from tests.conftest import ROOT, compose_config


def test_train_job_with_fast_dev_run_and_offline_wandb(tmp_path):
    cfg = compose_config(
        "train", tmp_path, ["+trainer.fast_dev_run=true", "logger=wandb", "ipg.splits=[ipg_val]"]
    )
    report = run_train(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "attack_report.json").read_text())
    assert saved == {k: v for k, v in report.items() if k != "ipg"}
    ipgs = json.loads((run / "ipg_datasets.json").read_text())
    assert ipgs == report["ipg"] and set(ipgs["stores"]["ipg_val"]) == {"benign", "fgsm", "pgd"}
    model = load_checkpoint(run / "target.pt", target_arch(cfg, load_data(cfg, run)[0]))
    ds = IPGDataset(
        ipgs["root"], list(ipgs["stores"]["ipg_val"].values()), fingerprint=model_fingerprint(model)
    )
    assert len(ds) == 3 * 250 and ds.attacks == ["none", "fgsm", "pgd"]
    for png in ("ipg_benign.png", "ipg_diff_fgsm.png", "ipg_diff_pgd.png"):
        assert (run / png).stat().st_size > 10_000
    assert (run / "splits.npz").is_file() and (run / "target.pt").is_file()
    assert set(report["adv_acc"]) == {"fgsm", "pgd"} and report["n"] == 750
    assert report["target"]["origin"] == "trained"
    assert list((run / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    assert "clean" in format_attack_table(report)


def test_every_attack_config_instantiates():
    cfg = compose_config("train", ROOT, ["attack=all"])
    attacks = make_attacks(cfg)
    assert sorted(attacks) == sorted(ATTACKS)
    assert all(isinstance(a, Attack) and a.name == n for n, a in attacks.items())
    assert attacks["pgd"].eps == cfg.dataset.eps == 0.15 and attacks["cw"].eps is None


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
    from ipg_gnn.pipeline import load_data

    cfg = compose_config("train", tmp_path, ["dataset=mnist", f"paths.data_dir={tmp_path}"])
    with pytest.raises(DatasetFileError, match="train-images-idx3-ubyte.gz"):
        load_data(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "splits.npz").exists()


def test_repair_job_evaluates_the_latest_train_run(tmp_path):
    from ipg_gnn.pipeline import run_repair

    train_cfg = compose_config(
        "train",
        tmp_path,
        [
            "+trainer.fast_dev_run=true",
            "logger=none",
            "attack=fgsm",
            "ipg.splits=[ipg_val]",
            f"paths.output_dir={tmp_path}/logs/train/r1",
        ],
    )
    trained = run_train(train_cfg)
    cfg = compose_config("repair", tmp_path, ["attack=fgsm"])
    report = run_repair(cfg)
    assert report["train_dir"] == str(tmp_path / "logs" / "train" / "r1")
    assert report["before"]["clean_acc"] == trained["clean_acc"]
    assert report["before"]["adv_acc"]["fgsm"] == trained["adv_acc"]["fgsm"]
    assert (tmp_path / "run" / "repair_report.json").is_file()


def test_repair_without_train_run_is_a_clear_error(tmp_path):
    from ipg_gnn.pipeline import load_train_run, run_repair

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
