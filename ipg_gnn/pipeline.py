"""The stages that `train.py` chains, each a function of the resolved Hydra config.

Every stage is usable on its own from Python; the entry points only pick the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from ipg_gnn.attacks import Attack
from ipg_gnn.checkpoints import (
    build_model,
    config_key,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
)
from ipg_gnn.data import ImageDataset, Splits, make_splits
from ipg_gnn.detect import Activations, evaluate_scores, fit_detector, score_graphs
from ipg_gnn.detect.report import markdown_report, plot_roc_curves, plot_transfer
from ipg_gnn.graphs import GraphStore, IPGDataset, build_store, prepare_capture
from ipg_gnn.provenance import CaptureConfig
from ipg_gnn.provenance.plot import plot_ipg, plot_ipg_difference
from ipg_gnn.targets import train_target

log = logging.getLogger(__name__)

# Settings that say where files are or how progress is shown, not what the weights become:
# left out of cache keys.
_LOCATION_KEYS = ("data_dir", "download", "folder")
_COSMETIC_TRAINER_KEYS = (
    "default_root_dir",
    "enable_progress_bar",
    "enable_model_summary",
    "enable_checkpointing",
    "log_every_n_steps",
    "logger",
)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def make_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate every logger of the `logger` group (none for `logger=none`)."""
    return [instantiate(c) for c in (cfg.get("logger") or {}).values()]


def close_loggers(loggers: list[Logger]) -> None:
    """Flush the loggers; an offline W&B run is closed so its files are complete on disk."""
    for lg in loggers:
        lg.finalize("success")
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()


def publish(loggers: list[Logger], metrics: Mapping[str, float], plots: list[Path] = ()) -> None:
    """Send a run's final numbers (and, to W&B, its plots) to every logger, then close them."""
    for lg in loggers:
        lg.log_metrics(dict(metrics))
        if isinstance(lg, WandbLogger):
            for plot in plots:  # one key each: W&B shows images of one key at one size
                lg.log_image(f"plots/{plot.stem}", [str(plot)])
    close_loggers(loggers)


def load_data(cfg: DictConfig, output_dir: str | Path) -> tuple[ImageDataset, Splits]:
    """Load the dataset, cut the splits and save their indices in the run directory."""
    # Called outside `instantiate` so a missing-file error reaches the user unwrapped.
    data: ImageDataset = instantiate(cfg.dataset.source, _partial_=True)()
    splits = make_splits(data, instantiate(cfg.split, _convert_="all"))
    splits.save(output_dir)
    log.info("dataset %s, splits %s", data.name, splits.sizes())
    return data, splits


def target_arch(cfg: DictConfig, data: ImageDataset) -> dict[str, Any]:
    """The target's architecture: its model config completed with the dataset's shapes."""
    return {
        **_plain(cfg.target.model),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
    }


def _source_identity(cfg: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in _plain(cfg.dataset.source).items() if k not in _LOCATION_KEYS}


def target_cache_key(cfg: DictConfig, arch: Mapping[str, Any]) -> str:
    """Hash of everything that shapes the target's weights."""
    trainer = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer).items()
        if k not in _COSMETIC_TRAINER_KEYS
    }
    return config_key(
        {
            "arch": arch,
            "train": _plain(cfg.target.train),
            "source": _source_identity(cfg),
            "split": _plain(cfg.split),
            "trainer": trainer,
            "seed": cfg.seed,
        }
    )


def obtain_target(
    cfg: DictConfig, data: ImageDataset, splits: Splits, loggers: list[Logger] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained target: from `target.checkpoint`, else from the cache, else trained now and
    cached. Returns the model (eval mode, CPU) and where it came from."""
    arch = target_arch(cfg, data)
    if cfg.target.checkpoint:
        path = Path(cfg.target.checkpoint)
        return load_checkpoint(path, arch), {"checkpoint": str(path), "origin": "checkpoint"}
    path = Path(cfg.paths.cache_dir) / "targets" / f"{target_cache_key(cfg, arch)}.pt"
    if path.is_file():
        log.info("reusing cached target %s", path)
        return load_checkpoint(path, arch), {"checkpoint": str(path), "origin": "cache"}
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(arch)
    train = cfg.target.train
    trainer: L.Trainer = instantiate(cfg.trainer, max_epochs=train.epochs, logger=loggers or False)
    model = train_target(
        model,
        splits.images(data, "target_train"),
        trainer,
        batch_size=train.batch_size,
        lr=train.lr,
        weight_decay=train.weight_decay,
        seed=cfg.seed,
    )
    save_checkpoint(path, model, arch, {"key_config": _plain(cfg.target)})
    log.info("trained target cached at %s", path)
    return model, {"checkpoint": str(path), "origin": "trained"}


def make_attacks(cfg: DictConfig) -> dict[str, Attack]:
    """Instantiate every attack of the `attack` group, by name."""
    return {name: instantiate(c) for name, c in cfg.attack.items()}


def format_attack_table(report: Mapping[str, Any]) -> str:
    """A small text table of clean and adversarial accuracy."""
    lines = [
        f"{'':10s} {'eps':>6s} {'accuracy':>9s}   (test split, n={report['n']})",
        f"{'clean':10s} {'-':>6s} {report['clean_acc']:9.2%}",
    ]
    for name, acc in report["adv_acc"].items():
        eps = report["eps"][name]
        lines.append(f"{name:10s} {'-' if eps is None else f'{eps:.3g}':>6s} {acc:9.2%}")
    return "\n".join(lines)


def build_ipg_datasets(
    cfg: DictConfig,
    model: nn.Module,
    data: ImageDataset,
    splits: Splits,
    attacks: Mapping[str, Attack],
) -> dict[str, Any]:
    """Build (or reuse from the cache) benign and adversarial IPG stores of every split in
    `ipg.splits` for every attack. Returns where they are: `root` and, per split, the store
    name of `benign` and of each attack."""
    config: CaptureConfig = instantiate(cfg.ipg.capture)
    key = config_key(
        {
            "capture": _plain(cfg.ipg.capture),
            "calibration": cfg.ipg.calibration_size,
            "split": _plain(cfg.split),
            "source": _source_identity(cfg),
            "seed": cfg.seed,
        }
    )
    fingerprint = model_fingerprint(model)
    root = Path(cfg.paths.cache_dir) / "ipg" / f"{fingerprint}-{key}"
    pool = splits.images(data, "ipg_train")
    rng = np.random.default_rng(cfg.seed)
    calibration = pool.subset(np.sort(rng.permutation(len(pool))[: cfg.ipg.calibration_size]))
    capturer, _ = prepare_capture(model, root, config, calibration.x)
    kinds: dict[str, Attack | None] = {"benign": None, **attacks}
    stores: dict[str, dict[str, str]] = {}
    for split in cfg.ipg.splits:
        images, index = splits.images(data, split), splits.indices[split]
        stores[split] = {
            kind: f"{split}-benign"
            if attack is None
            else f"{split}-{kind}-{config_key(_plain(cfg.attack[kind]))[:8]}"
            for kind, attack in kinds.items()
        }
        for kind, attack in kinds.items():
            build_store(
                capturer,
                model,
                images,
                index,
                root / stores[split][kind],
                split,
                attack,
                cfg.ipg.shard_size,
                cfg.seed,
            )
        log.info("IPGs of %s: %d inputs x (benign + %d attacks)", split, len(images), len(attacks))
    return {"root": str(root), "fingerprint": fingerprint, "stores": stores}


def plot_example_ipgs(dataset: IPGDataset, out: Path) -> list[Path]:
    """Draw the first benign graph of `dataset` and, per attack, the difference between the
    same input's adversarial and benign graphs. Returns the PNG paths."""
    meta, layers = dataset.meta, dataset.topology.layers
    first = int(torch.nonzero(~meta["is_adv"])[0])
    source = int(meta["source_index"][first])
    paths = [out / "ipg_benign.png"]
    plot_ipg(dataset[first], layers, paths[0], title=f"benign IPG, input {source}")
    for attack_id, attack in enumerate(dataset.attacks):
        same = meta["is_adv"] & (meta["attack_id"] == attack_id) & (meta["source_index"] == source)
        if same.any():
            paths.append(out / f"ipg_diff_{attack}.png")
            plot_ipg_difference(
                dataset[first],
                dataset[int(torch.nonzero(same)[0])],
                layers,
                paths[-1],
                title=f"{attack} - benign, input {source}",
            )
    plt.close("all")
    return paths


IPG_SPLITS_NEEDED = ("ipg_train", "ipg_val", "test")


class StageClock:
    """Wall time per named stage (`with clock("name"): ...`), for the reports."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 2)


def attack_report_from_ipgs(ipgs: Mapping[str, Any], split: str = "test") -> dict[str, Any]:
    """Clean and adversarial accuracy on `split`, read from its IPG stores (each graph records
    the target's prediction on its input), so no attack runs twice."""
    stores = ipgs["stores"][split]
    benign = GraphStore(Path(ipgs["root"]) / stores["benign"]).load()
    report: dict[str, Any] = {
        "n": len(benign["pred"]),
        "adv_acc": {},
        "eps": {},
        "attack_success_rate": {},
    }
    report["clean_acc"] = float((benign["pred"] == benign["true_label"]).float().mean())
    for attack, name in stores.items():
        if attack != "benign":
            store = GraphStore(Path(ipgs["root"]) / name)
            adv = store.load()
            report["adv_acc"][attack] = float((adv["pred"] == adv["true_label"]).float().mean())
            report["attack_success_rate"][attack] = float(adv["success"].float().mean())
            report["eps"][attack] = store.manifest()["eps"]
    return report


def ipg_dataset(ipgs: Mapping[str, Any], split: str, attacks: list[str]) -> IPGDataset:
    """The benign graphs of `split` plus its adversarial graphs under `attacks`."""
    stores = ipgs["stores"][split]
    return IPGDataset(
        ipgs["root"],
        [stores["benign"], *(stores[a] for a in attacks)],
        fingerprint=ipgs["fingerprint"],
    )


def detector_arch(cfg: DictConfig, num_nodes: int) -> dict[str, Any]:
    return {**_plain(cfg.gnn.model), "num_nodes": num_nodes}


def train_gnn_detector(
    cfg: DictConfig,
    train: IPGDataset,
    val: IPGDataset,
    directory: Path,
    loggers: list[Logger] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the configured GNN and fit it on `train`, selecting by AUROC on `val`."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(detector_arch(cfg, train.topology.num_nodes))
    g = cfg.gnn.train

    def trainer(callbacks: list) -> L.Trainer:
        return instantiate(
            cfg.trainer,
            max_epochs=g.max_epochs,
            callbacks=callbacks,
            logger=loggers or False,
            enable_checkpointing=True,
            default_root_dir=str(directory),
        )

    info = fit_detector(
        model, train, val, trainer, directory, g.batch_size, g.lr, g.weight_decay, g.patience
    )
    return model.eval(), info


def run_detection(
    cfg: DictConfig,
    ipgs: Mapping[str, Any],
    out: Path,
    loggers: list[Logger] | None = None,
    clock: StageClock | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Train the GNN detector on `ipg_train` (selected on `ipg_val`), compare it with the
    baselines on the same graphs, measure transfer across attacks; test split only for
    numbers. Writes `detector.pt`, `detector_report.{json,md}`, the plots and example IPG
    pictures of the test split."""
    attacks = list(cfg.detector.attacks or [a for a in ipgs["stores"]["test"] if a != "benign"])
    clock = clock or StageClock()
    train, val, test = (ipg_dataset(ipgs, s, attacks) for s in IPG_SPLITS_NEEDED)
    with clock("detector"):
        model, info = train_gnn_detector(cfg, train, val, out / "detector", loggers)
    save_checkpoint(out / "detector.pt", model, detector_arch(cfg, train.topology.num_nodes), info)
    scores = {"GNN": score_graphs(model, test)}
    gnn = evaluate_scores(scores["GNN"], test.meta, test.attacks)
    train_acts, test_acts = Activations.of(train), Activations.of(test)
    baselines = {}
    for name, spec in (cfg.detector.baselines or {}).items():
        with clock(f"baseline_{name}"):
            scores[name] = torch.from_numpy(instantiate(spec).fit(train_acts).score(test_acts))
        result = evaluate_scores(scores[name], test.meta, test.attacks)
        baselines[name] = {**result["all"], "per_attack": result["per_attack"]}
    transfer = {}
    if cfg.detector.transfer and len(attacks) > 1:
        with clock("transfer"):
            for source in tqdm(attacks, desc="transfer detectors"):
                one, _ = train_gnn_detector(
                    cfg,
                    train.select_attacks([source]),
                    val.select_attacks([source]),
                    out / "transfer" / source,
                )
                result = evaluate_scores(score_graphs(one, test), test.meta, test.attacks)
                transfer[source] = {a: result["per_attack"][a]["auroc"] for a in attacks}
    report = {
        "test": gnn["all"],
        "per_attack": gnn["per_attack"],
        "baselines": baselines,
        "transfer": transfer,
        "n_graphs": {s: len(d) for s, d in zip(IPG_SPLITS_NEEDED, (train, val, test), strict=True)},
        "detector": {"gnn": cfg.gnn.model.conv, "checkpoint": str(out / "detector.pt"), **info},
        "timing_s": clock.seconds,
    }
    (out / "detector_report.json").write_text(json.dumps(report, indent=2))
    (out / "detector_report.md").write_text(markdown_report(report))
    plots = [plot_roc_curves(scores, test.meta, test.attacks, out / "roc_curves.png")]
    if transfer:
        plots.append(plot_transfer(transfer, out / "transfer_auroc.png"))
    return report, plots + plot_example_ipgs(test, out)


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """The `train.py` job: data and splits -> target model -> IPG datasets of every configured
    split and attack -> GNN detector, baselines and transfer -> reports.

    Writes into `paths.output_dir`: `train_config.yaml`, `splits.*`, `target.pt`,
    `attack_report.json`, `ipg_datasets.json`, example IPG pictures, `detector.pt`,
    `detector_report.{json,md}`, `roc_curves.png` and `transfer_auroc.png`."""
    missing = [s for s in IPG_SPLITS_NEEDED if s not in cfg.ipg.splits]
    if missing:
        raise ValueError(
            f"ipg.splits must include {', '.join(IPG_SPLITS_NEEDED)} (the "
            f"detector trains, selects and tests on them); missing "
            f"{', '.join(missing)}"
        )
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / TRAIN_CONFIG, resolve=True)
    loggers = make_loggers(cfg)
    clock = StageClock()
    with clock("data"):
        data, splits = load_data(cfg, out)
    with clock("target"):
        model, origin = obtain_target(cfg, data, splits, loggers)
    save_checkpoint(out / "target.pt", model, target_arch(cfg, data), origin)
    with clock("ipg_datasets"):
        ipgs = build_ipg_datasets(cfg, model, data, splits, make_attacks(cfg))
    (out / "ipg_datasets.json").write_text(json.dumps(ipgs, indent=2))
    attack_report = {
        "dataset": data.name,
        "splits": splits.sizes(),
        "target": origin,
        **attack_report_from_ipgs(ipgs),
    }
    (out / "attack_report.json").write_text(json.dumps(attack_report, indent=2))
    detection, plots = run_detection(cfg, ipgs, out, loggers, clock)
    metrics = {
        "test/clean_acc": attack_report["clean_acc"],
        **{f"test/adv_acc/{k}": v for k, v in attack_report["adv_acc"].items()},
        **{f"detector/test_{k}": v for k, v in detection["test"].items() if isinstance(v, float)},
        **{f"detector/test_auroc/{a}": r["auroc"] for a, r in detection["per_attack"].items() if r},
    }
    publish(loggers, metrics, plots)
    return {"attack": attack_report, "detection": detection, "ipg": ipgs}


TRAIN_CONFIG = "train_config.yaml"
_TRAIN_RUN_FILES = (TRAIN_CONFIG, "splits.npz", "splits.json", "target.pt")


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
    data: ImageDataset = instantiate(cfg.dataset.source, _partial_=True)()
    model = load_checkpoint(directory / "target.pt", target_arch(cfg, data))
    return TrainRun(directory, cfg, data, Splits.load(directory), model)
