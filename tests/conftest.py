"""Shared fixtures: composed configs and one trained default target for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]


def compose_config(name: str, tmp: Path, overrides: list[str] = ()) -> DictConfig:
    """Compose a Hydra config the way the entry point would, with paths inside `tmp`."""
    quiet = ["trainer.enable_progress_bar=false"] if name == "train" else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            name,
            overrides=[
                f"paths.output_dir={tmp / 'run'}",
                f"paths.cache_dir={tmp / 'cache'}",
                f"paths.log_dir={tmp / 'logs'}",
                *quiet,
                *overrides,
            ],
        )


@pytest.fixture(scope="session")
def trained_default(tmp_path_factory):
    """The default MLP trained on mnist_subset's target_train split, via the real pipeline."""
    from ipg_gnn.jobs.stages import load_data, make_objective, obtain_target

    tmp = tmp_path_factory.mktemp("default")
    cfg = compose_config("train", tmp, ["logger=none"])
    data, splits = load_data(cfg, tmp / "run")
    objective = make_objective(cfg)
    model, origin = obtain_target(cfg, data, splits, objective)
    return {
        "cfg": cfg,
        "data": data,
        "splits": splits,
        "model": model,
        "origin": origin,
        "objective": objective,
    }
