"""Stage functions of the jobs, each a function of the resolved Hydra config.

Every stage is usable on its own from Python; the jobs only chain them and pick the run
directory. The objective (`cfg.objective`, instantiated once per job) says what populations the
IPG datasets hold; nothing here knows which objective it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from torch import nn
from torch_geometric.data import Data
from tqdm.auto import tqdm

from ipg_gnn.data import ImageDataset, Images, Splits, make_splits
from ipg_gnn.detect import Activations, evaluate_scores, fit_detector, layer_spans, score_graphs
from ipg_gnn.detect.differentiable import BaselineLogit, GNNLogit, GraphLogit
from ipg_gnn.detect.report import markdown_report, plot_roc_curves, plot_transfer
from ipg_gnn.graphs import GraphStore, IPGDataset, build_store, prepare_capture
from ipg_gnn.jobs.checks import ConfigError
from ipg_gnn.objectives import Objective, Selection, SplitInputs
from ipg_gnn.provenance import CaptureConfig
from ipg_gnn.provenance.plot import plot_ipg, plot_ipg_difference
from ipg_gnn.runs.checkpoints import build_model, load_checkpoint, save_checkpoint
from ipg_gnn.runs.io import ArtifactError, atomic_write_text
from ipg_gnn.runs.keys import ipg_cache_key, model_fingerprint, plain, target_cache_key
from ipg_gnn.runs.tracking import StageClock
from ipg_gnn.runs.train_run import detector_arch, run_dataset, target_arch
from ipg_gnn.targets import train_target

log = logging.getLogger(__name__)

# The splits the detector trains on, selects on and is tested on.
DETECTOR_SPLITS = ("ipg_train", "ipg_val", "test")


def build(node: DictConfig, key: str) -> Any:
    """`instantiate(node)`; a setting the class refuses is reported as one line naming the
    config key, not as Hydra's wrapped traceback."""
    log.info("instantiating %s <%s>", key, node._target_)
    try:
        return instantiate(node)
    except InstantiationException as e:
        raise ConfigError(f"{key}: {e.__cause__ or e}") from e.__cause__


def make_objective(cfg: DictConfig) -> Objective:
    """The run's objective (`objective` config group)."""
    return build(cfg.objective, "objective")


def load_data(cfg: DictConfig, output_dir: str | Path) -> tuple[ImageDataset, Splits]:
    """Load the dataset, cut the splits and save their indices in the run directory."""
    data = run_dataset(cfg)
    splits = make_splits(data, instantiate(cfg.split, _convert_="all"))
    splits.save(output_dir)
    log.info("dataset %s, splits %s", data.name, splits.sizes())
    return data, splits


def obtain_target(
    cfg: DictConfig,
    data: ImageDataset,
    splits: Splits,
    objective: Objective,
    loggers: list[Logger] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained target: from `target.checkpoint`, else from the cache, else trained now (on
    the objective's training set) and cached. Returns the model (eval mode, CPU) and where it
    came from."""
    arch = target_arch(cfg, data)
    if cfg.target.checkpoint:
        path = Path(cfg.target.checkpoint)
        return load_checkpoint(path, arch), {"checkpoint": str(path), "origin": "checkpoint"}
    training_set = objective.training_set(splits.images(data, "target_train"), cfg.seed)
    key = target_cache_key(cfg, arch, training_set.fingerprint())
    path = Path(cfg.paths.cache_dir) / "targets" / f"{key}.pt"
    if path.is_file():
        try:
            model = load_checkpoint(path, arch)
            log.info("reusing cached target %s", path)
            return model, {"checkpoint": str(path), "origin": "cache"}
        except ArtifactError as e:
            log.warning("%s; training the target again", e)
    model = fit_target(cfg, arch, training_set, cfg.seed, loggers)
    save_checkpoint(path, model, arch, {"key_config": plain(cfg.target)})
    log.info("trained target cached at %s", path)
    return model, {"checkpoint": str(path), "origin": "trained"}


def fit_target(
    cfg: DictConfig,
    arch: Mapping[str, Any],
    training_set: Images,
    seed: int,
    loggers: list[Logger] | None = None,
    **trainer_settings: Any,
) -> nn.Module:
    """A fresh model of `arch` trained on `training_set` the way `target.train` and `trainer`
    say, seeded by `seed`: the target, or a shadow model trained like it."""
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_model(arch)
    train = cfg.target.train
    trainer: L.Trainer = instantiate(
        cfg.trainer, max_epochs=train.epochs, logger=loggers or False, **trainer_settings
    )
    return train_target(
        model,
        training_set,
        trainer,
        batch_size=train.batch_size,
        lr=train.lr,
        weight_decay=train.weight_decay,
        seed=seed,
    )


def fit_cached(
    cfg: DictConfig, arch: Mapping[str, Any], training_set: Images, seed: int, kind: str
) -> nn.Module:
    """`fit_target` of a model like the target (a shadow or reference model), cached under
    `paths.cache_dir/<kind>` by what shapes its weights (recipe, exact inputs, seed): the audits
    and repairs of one target share them instead of training them again."""
    key = target_cache_key(cfg, arch, training_set.fingerprint())
    path = Path(cfg.paths.cache_dir) / kind / f"{key}-{seed}.pt"
    if path.is_file():
        try:
            return load_checkpoint(path, arch)
        except ArtifactError as e:
            log.warning("%s; training the %s model again", e, kind)
    model = fit_target(
        cfg, arch, training_set, seed, enable_progress_bar=False, enable_model_summary=False
    )
    save_checkpoint(path, model, arch, {"kind": kind, "seed": seed})
    return model


def split_inputs(data: ImageDataset, splits: Splits) -> SplitInputs:
    """What a population selects from: the inputs of any split, with their dataset indices."""
    return lambda split: Selection(splits.images(data, split), splits.indices[split])


def build_ipg_datasets(
    cfg: DictConfig,
    model: nn.Module,
    data: ImageDataset,
    splits: Splits,
    objective: Objective,
    split_names: Sequence[str] | None = None,
    contrasts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build (or reuse from the cache) the IPG stores of the reference population and of every
    contrast population (or of `contrasts`) for every split in `split_names` (default
    `ipg.splits`), each of the inputs the population selects. Returns where they are: `root`
    and, per split, the store name of each population."""
    config: CaptureConfig = instantiate(cfg.ipg.capture)
    fingerprint = model_fingerprint(model)
    pool = splits.images(data, "ipg_train")
    rng = np.random.default_rng(cfg.seed)
    calibration = pool.subset(np.sort(rng.permutation(len(pool))[: cfg.ipg.calibration_size]))
    key = ipg_cache_key(cfg, calibration.fingerprint())
    root = Path(cfg.paths.cache_dir) / "ipg" / f"{fingerprint}-{key}"
    capturer, _ = prepare_capture(model, root, config, calibration.x)
    chosen = objective.contrasts()
    unknown = sorted(set(contrasts or []) - set(chosen))
    if unknown:
        raise ConfigError(
            f"detector.contrasts: no contrast populations {unknown}; this objective has "
            f"{list(chosen)}"
        )
    reference = objective.reference_population()
    populations = {
        reference.name: reference,
        **{n: c for n, c in chosen.items() if contrasts is None or n in contrasts},
    }
    inputs = split_inputs(data, splits)
    stores: dict[str, dict[str, str]] = {}
    for split in split_names or cfg.ipg.splits:
        stores[split] = {
            name: f"{split}-{name}" if p.key is None else f"{split}-{name}-{p.key}"
            for name, p in populations.items()
        }
        sizes = []
        for name, population in populations.items():
            selected = population.select(split, inputs)
            sizes.append(f"{name} {len(selected.images)}")
            build_store(
                capturer,
                model,
                selected.images,
                selected.source_index,
                root / stores[split][name],
                split,
                name,
                None if population is reference else population,
                cfg.ipg.shard_size,
                cfg.seed,
            )
        log.info("IPGs of %s: %s", split, ", ".join(sizes))
    return {
        "root": str(root),
        "fingerprint": fingerprint,
        "reference": reference.name,
        "stores": stores,
        "label_features": bool(cfg.ipg.get("label_features", False)),
    }


def ipg_dataset(
    ipgs: Mapping[str, Any],
    split: str,
    contrasts: Sequence[str],
    reference_logits: torch.Tensor | None = None,
) -> IPGDataset:
    """The reference graphs of `split` plus its graphs of the `contrasts` populations (with
    label node features when `ipgs` says so, `ipg.label_features`, or when reference models'
    `reference_logits` on the same inputs calibrate them: `IPGDataset`)."""
    stores = ipgs["stores"][split]
    return IPGDataset(
        ipgs["root"],
        [stores[ipgs["reference"]], *(stores[c] for c in contrasts)],
        fingerprint=ipgs["fingerprint"],
        label_features=ipgs.get("label_features", False),
        reference_logits=reference_logits,
    )


def population_report(
    ipgs: Mapping[str, Any], objective: Objective, split: str = "test"
) -> dict[str, Any]:
    """The objective's numbers of the target on `split`, read from its IPG stores (each graph
    records the target's prediction on its input), so no contrast is made twice."""
    root, stores = Path(ipgs["root"]), dict(ipgs["stores"][split])
    reference = GraphStore(root / stores.pop(ipgs["reference"])).load()
    contrasts = {name: GraphStore(root / store).load() for name, store in stores.items()}
    return objective.population_report(reference, contrasts)


def mean_graph(dataset: IPGDataset, mask: torch.Tensor) -> Data:
    """The mean of the graphs `mask` picks (node features and contributions): what an unpaired
    population looks like on average (needs the shared edge set of ipg=static or dense)."""
    t, topology = dataset.tensors, dataset.topology
    index = torch.as_tensor(list(dataset.indices()), dtype=torch.long)[mask]
    contribution = t["contribution"][index].mean(0)
    return Data(
        x=t["x"][index].mean(0),
        edge_index=topology.edge_index,
        edge_attr=torch.stack([contribution, topology.weight], dim=1),
    )


def plot_example_ipgs(dataset: IPGDataset, out: Path) -> list[Path]:
    """Draw the first reference graph of `dataset` and, per contrast population, the difference
    between the same input's contrast and reference graphs; a population of other inputs (not
    paired with the reference's) gets the difference of the two populations' mean graphs
    instead. Returns the PNG paths."""
    meta, layers = dataset.meta, dataset.topology.layers
    first = int(torch.nonzero(~meta["is_contrast"])[0])
    source = int(meta["source_index"][first])
    reference = dataset.populations[int(meta["population_id"][first])]
    paths = [out / f"ipg_{reference}.png"]
    plot_ipg(dataset[first], layers, paths[0], title=f"{reference} IPG, input {source}")
    for pid, name in enumerate(dataset.populations):
        members = meta["is_contrast"] & (meta["population_id"] == pid)
        same = members & (meta["source_index"] == source)
        if same.any():
            pair = dataset[first], dataset[int(torch.nonzero(same)[0])]
            title = f"{name} - {reference}, input {source}"
        elif members.any() and not dataset.dynamic:
            pair = mean_graph(dataset, ~meta["is_contrast"]), mean_graph(dataset, members)
            title = f"{name} - {reference}, mean graphs"
        else:
            continue
        paths.append(out / f"ipg_diff_{name}.png")
        label = f"value change ({name} - {reference})"
        plot_ipg_difference(*pair, layers, paths[-1], title=title, value_label=label)
    plt.close("all")
    return paths


def train_gnn_detector(
    cfg: DictConfig,
    train: IPGDataset,
    val: IPGDataset,
    directory: Path,
    loggers: list[Logger] | None = None,
    node_features: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the configured GNN (for `node_features` node features, when given) and fit it on
    `train`, selecting by AUROC on `val`."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    arch = detector_arch(cfg, train.topology.num_nodes)
    model = build_model(arch if node_features is None else {**arch, "node_features": node_features})
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
    objective: Objective,
    out: Path,
    loggers: list[Logger] | None = None,
    clock: StageClock | None = None,
) -> tuple[dict[str, Any], list[Path], dict[str, GraphLogit]]:
    """Train the GNN detector on `ipg_train` (selected on `ipg_val`), compare it with the
    baselines on the same graphs, measure transfer across contrast populations; test split only
    for numbers. Writes `detector.pt`, `detector_report.{json,md}`, the plots and example IPG
    pictures of the test split. Returns the report, the plots and every trained detector as a
    differentiable logit of IPG tensors (what an adaptive attacker targets)."""
    per = f"per_{objective.noun}"
    stores = ipgs["stores"]["test"]
    contrasts = list(cfg.detector.contrasts or [p for p in stores if p != ipgs["reference"]])
    clock = clock or StageClock()
    train, val, test = (ipg_dataset(ipgs, s, contrasts) for s in DETECTOR_SPLITS)
    with clock("detector"):
        model, info = train_gnn_detector(cfg, train, val, out / "detector", loggers)
    save_checkpoint(out / "detector.pt", model, detector_arch(cfg, train.topology.num_nodes), info)
    scores = {"GNN": score_graphs(model, test)}
    gnn = evaluate_scores(scores["GNN"], test.meta, test.populations)
    topology = test.topology
    detectors: dict[str, GraphLogit] = {
        "GNN": GNNLogit(model, topology.edge_index, topology.weight)
    }
    spans = layer_spans(topology.layers)
    train_acts, test_acts = Activations.of(train), Activations.of(test)
    baselines = {}
    for name, spec in (cfg.detector.baselines or {}).items():
        with clock(f"baseline_{name}"):
            fitted = instantiate(spec).fit(train_acts)
            scores[name] = fitted.score(test_acts)
        detectors[name] = BaselineLogit(fitted, spans)
        result = evaluate_scores(scores[name], test.meta, test.populations)
        baselines[name] = {**result["all"], per: result["per_population"]}
    transfer = {}
    if cfg.detector.transfer and len(contrasts) > 1:
        with clock("transfer"):
            for source in tqdm(contrasts, desc="transfer detectors"):
                one, _ = train_gnn_detector(
                    cfg,
                    train.select_contrasts([source]),
                    val.select_contrasts([source]),
                    out / "transfer" / source,
                )
                result = evaluate_scores(score_graphs(one, test), test.meta, test.populations)
                transfer[source] = {c: result["per_population"][c]["auroc"] for c in contrasts}
    report = {
        "test": gnn["all"],
        per: gnn["per_population"],
        "baselines": baselines,
        "transfer": transfer,
        "n_graphs": {s: len(d) for s, d in zip(DETECTOR_SPLITS, (train, val, test), strict=True)},
        "detector": {"gnn": cfg.gnn.model.conv, "checkpoint": str(out / "detector.pt"), **info},
        "timing_s": clock.seconds,
    }
    write_detector_report(report, objective.noun, out)
    plots = [
        plot_roc_curves(scores, test.meta, test.populations, test.contrasts, out / "roc_curves.png")
    ]
    if transfer:
        plots.append(plot_transfer(transfer, out / "transfer_auroc.png"))
    return report, plots + plot_example_ipgs(test, out), detectors


def write_detector_report(report: Mapping[str, Any], noun: str, out: Path) -> None:
    """`detector_report.json` and its markdown summary `detector_report.md`."""
    atomic_write_text(json.dumps(report, indent=2), out / "detector_report.json")
    atomic_write_text(markdown_report(report, noun), out / "detector_report.md")
