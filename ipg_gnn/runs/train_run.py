"""A `train.py` run directory: the architectures its checkpoints are saved with, and loading a
finished run back (what `repair.py` starts from)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ipg_gnn.data import ImageDataset, Splits
from ipg_gnn.runs.checkpoints import load_checkpoint
from ipg_gnn.runs.keys import plain

TRAIN_CONFIG = "train_config.yaml"
_TRAIN_RUN_FILES = (TRAIN_CONFIG, "splits.npz", "splits.json", "target.pt")


def target_arch(cfg: DictConfig, data: ImageDataset) -> dict[str, Any]:
    """The target's architecture: its model config completed with the dataset's shapes."""
    return {
        **plain(cfg.target.model),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
    }


def detector_arch(cfg: DictConfig, num_nodes: int) -> dict[str, Any]:
    """The GNN detector's architecture: its model config completed with the IPG's node count."""
    return {**plain(cfg.gnn.model), "num_nodes": num_nodes}


def run_dataset(cfg: DictConfig) -> ImageDataset:
    """The run's dataset. Called outside `instantiate` so a missing-file error reaches the user
    unwrapped."""
    return instantiate(cfg.dataset.source, _partial_=True)()


@dataclass
class TrainRun:
    """A finished `train.py` run, loaded back: its config, data, splits and target."""

    directory: Path
    cfg: DictConfig
    data: ImageDataset
    splits: Splits
    model: nn.Module


def latest_train_run(log_dir: str | Path) -> Path:
    """The most recent run directory under `<log_dir>/train/` (single runs and multirun jobs)."""
    runs = sorted(
        (Path(log_dir) / "train").glob("**/" + TRAIN_CONFIG), key=lambda p: p.stat().st_mtime
    )
    if not runs:
        raise FileNotFoundError(
            f"no train.py run under {Path(log_dir).resolve() / 'train'}; "
            "run `python train.py` first or pass train_dir=<run dir>"
        )
    return runs[-1].parent


def load_train_run(directory: str | Path) -> TrainRun:
    """Load a `train.py` run directory; a clear error says what is missing."""
    directory = Path(directory)
    missing = [f for f in _TRAIN_RUN_FILES if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} is not a complete train.py run: missing {', '.join(missing)}"
        )
    cfg = OmegaConf.load(directory / TRAIN_CONFIG)
    data = run_dataset(cfg)
    model = load_checkpoint(directory / "target.pt", target_arch(cfg, data))
    return TrainRun(directory, cfg, data, Splits.load(directory), model)
