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
from ipg_gnn.errors import MissingFileError
from ipg_gnn.graphs.dataset import LABEL_FEATURES
from ipg_gnn.provenance import NODE_FEATURES
from ipg_gnn.runs.checkpoints import load_checkpoint
from ipg_gnn.runs.io import ArtifactError, read_checked
from ipg_gnn.runs.keys import plain
from ipg_gnn.runs.run_dir import RUN_INDEX, RunRecord, read_record

TRAIN_CONFIG = "train_config.yaml"
_TRAIN_RUN_FILES = (TRAIN_CONFIG, "splits.npz", "splits.json", "target.pt")
_RERUN = "run train.py again into a new directory"


def target_arch(cfg: DictConfig, data: ImageDataset) -> dict[str, Any]:
    """The target's architecture: its model config completed with the dataset's shapes."""
    return {
        **plain(cfg.target.model),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
    }


def detector_arch(cfg: DictConfig, num_nodes: int) -> dict[str, Any]:
    """The GNN detector's architecture: its model config completed with the IPG's node count
    and node features (the capture's, plus the label features with `ipg.label_features`)."""
    arch = {**plain(cfg.gnn.model), "num_nodes": num_nodes}
    if cfg.ipg.get("label_features", False):  # absent otherwise: older checkpoints still load
        arch["node_features"] = len(NODE_FEATURES) + len(LABEL_FEATURES)
    return arch


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
    record: RunRecord

    def detector(self, num_nodes: int) -> nn.Module:
        """The run's GNN detector, checked to be the one this run trained."""
        path = self.directory / "detector.pt"
        if not path.is_file():
            raise MissingFileError(
                f"{self.directory} has no detector (detector.pt): run train.py to the end "
                "before repair.py, or use explainer=flow_difference, which needs none"
            )
        self.record.verify(("detector.pt",), _RERUN)
        return load_checkpoint(path, detector_arch(self.cfg, num_nodes), _RERUN)


def _finished(index: Path) -> bool:
    try:
        return read_record(index.parent).complete
    except (ArtifactError, TypeError):
        return False


def latest_train_run(log_dir: str | Path) -> Path:
    """The most recent finished run directory under `<log_dir>/train/` (single runs and
    multirun jobs); unfinished or damaged runs are passed over."""
    runs = sorted(
        (p for p in (Path(log_dir) / "train").glob("**/" + RUN_INDEX) if _finished(p)),
        key=lambda p: p.stat().st_mtime,
    )
    if not runs:
        raise MissingFileError(
            f"no finished train.py run under {Path(log_dir).resolve() / 'train'}; "
            "run `python train.py` first or pass train_dir=<run dir>"
        )
    return runs[-1].parent


def load_train_run(directory: str | Path) -> TrainRun:
    """Load a finished `train.py` run directory whose files are the ones that run wrote; a
    clear error names what is missing, unfinished or changed."""
    directory = Path(directory)
    missing = [f for f in (*_TRAIN_RUN_FILES, RUN_INDEX) if not (directory / f).is_file()]
    if missing:
        raise MissingFileError(
            f"{directory} is not a complete train.py run: missing {', '.join(missing)}"
        )
    record = read_record(directory)
    if record.task != "train" or not record.complete:
        raise ArtifactError(f"{directory} holds an unfinished {record.task} run; {_RERUN}")
    record.verify(_TRAIN_RUN_FILES, _RERUN)
    cfg = OmegaConf.load(directory / TRAIN_CONFIG)
    data = run_dataset(cfg)
    model = load_checkpoint(directory / "target.pt", target_arch(cfg, data), _RERUN)
    splits = read_checked(directory / "splits.npz", lambda f: Splits.load(f.parent), _RERUN)
    return TrainRun(directory, cfg, data, splits, model, record)
