"""The `train.py` job: data and splits -> target -> IPG datasets of every configured split and
population -> GNN detector, baselines and transfer -> reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ipg_gnn.jobs.adaptive import run_adaptive_study
from ipg_gnn.jobs.checks import ConfigError, TrainSettings, check_settings
from ipg_gnn.jobs.stages import (
    DETECTOR_SPLITS,
    build_ipg_datasets,
    load_data,
    make_objective,
    obtain_target,
    population_report,
    run_detection,
    write_detector_report,
)
from ipg_gnn.runs.checkpoints import save_checkpoint
from ipg_gnn.runs.io import atomic_write_text
from ipg_gnn.runs.run_dir import RunRecord, claim
from ipg_gnn.runs.tracking import StageClock, make_loggers, publish
from ipg_gnn.runs.train_run import TRAIN_CONFIG, target_arch


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Writes into `paths.output_dir`: `train_config.yaml`, `splits.*`, `target.pt`,
    `attack_report.json` (the objective's numbers on the test split), `ipg_datasets.json`,
    example IPG pictures, `detector.pt`, `detector_report.{json,md}`, `roc_curves.png` and
    `transfer_auroc.png` (with `detector.adaptive`, the adaptive study in the detector report
    and `adaptive_eps.png`), indexed with their checksums in `run.json` (the directory belongs to
    this run); sends the numbers to the loggers. Returns the reports."""
    check_settings(cfg, TrainSettings)
    missing = [s for s in DETECTOR_SPLITS if s not in cfg.ipg.splits]
    if missing:
        raise ConfigError(
            f"ipg.splits must include {', '.join(DETECTOR_SPLITS)} (the detector trains, "
            f"selects and tests on them); missing {', '.join(missing)}"
        )
    if cfg.detector.adaptive and cfg.ipg.get("label_features", False):
        raise ConfigError(
            "detector.adaptive with ipg.label_features: the adaptive attacker differentiates "
            "the capture's node features only; turn one of them off"
        )
    out = Path(cfg.paths.output_dir)
    with claim(out, "train", cfg) as record:
        result = _train(cfg, out, record)
        record.finish()
    return result


def _train(cfg: DictConfig, out: Path, record: RunRecord) -> dict[str, Any]:
    OmegaConf.save(cfg, out / TRAIN_CONFIG, resolve=True)
    objective = make_objective(cfg)
    loggers = make_loggers(cfg)
    clock = StageClock()
    with clock("data"):
        data, splits = load_data(cfg, out)
    with clock("target"):
        model, origin = obtain_target(cfg, data, splits, objective, loggers)
    save_checkpoint(out / "target.pt", model, target_arch(cfg, data), origin)
    record.add(TRAIN_CONFIG, "splits.npz", "splits.json", "target.pt")
    with clock("ipg_datasets"):
        ipgs = build_ipg_datasets(cfg, model, data, splits, objective)
    atomic_write_text(json.dumps(ipgs, indent=2), out / "ipg_datasets.json")
    report = {
        "dataset": data.name,
        "splits": splits.sizes(),
        "target": origin,
        **population_report(ipgs, objective),
    }
    atomic_write_text(json.dumps(report, indent=2), out / "attack_report.json")
    detection, plots, detectors = run_detection(cfg, ipgs, objective, out, loggers, clock)
    if cfg.detector.adaptive:
        with clock("adaptive"):
            detection["adaptive"], plot = run_adaptive_study(
                cfg, model, data, splits, ipgs, detectors, out
            )
        write_detector_report(detection, objective.noun, out)
        plots.append(plot)
    record.add("ipg_datasets.json", "attack_report.json", "detector.pt", "detector_report.json")
    per = detection[f"per_{objective.noun}"]
    metrics = {
        **objective.population_metrics(report),
        **{f"detector/test_{k}": v for k, v in detection["test"].items() if isinstance(v, float)},
        **{f"detector/test_auroc/{a}": r["auroc"] for a, r in per.items() if r},
    }
    publish(loggers, metrics, plots)
    return {"attack": report, "detection": detection, "ipg": ipgs, "objective": objective}
