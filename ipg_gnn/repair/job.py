"""The `repair.py` job: attribution -> repair plan -> targeted repair -> baselines ->
evaluation on the test split, for one `train.py` run."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ipg_gnn.attacks import Attack, seed_attack_rng
from ipg_gnn.checkpoints import load_checkpoint, save_checkpoint
from ipg_gnn.data import Images
from ipg_gnn.explain import (
    FLOW_EXPLAINER,
    Attribution,
    PlanError,
    RepairPlan,
    attribute,
    flow_difference,
    make_plan,
)
from ipg_gnn.explain.plot import plot_plan
from ipg_gnn.graphs import Topology
from ipg_gnn.pipeline import (
    StageClock,
    TrainRun,
    build_ipg_datasets,
    detector_arch,
    ipg_dataset,
    latest_train_run,
    load_train_run,
    make_attacks,
    make_loggers,
    publish,
    target_arch,
)
from ipg_gnn.provenance import trace
from ipg_gnn.repair import (
    Masks,
    all_masks,
    count_allowed,
    layer_masks,
    masked_finetune,
    params_per_target,
    plan_masks,
)
from ipg_gnn.repair.evaluate import ActivationPatch, evaluate_attacks, mean_unit_outputs
from ipg_gnn.repair.report import (
    flat_metrics,
    markdown_report,
    mean_results,
    plot_finetune_curves,
)

log = logging.getLogger(__name__)
BASELINES = ("random", "last_layer", "full_finetune", "activation_patch")


def repair_split_parts(run: TrainRun, val_fraction: float, seed: int) -> tuple[Images, Images]:
    """The repair split cut into a fine-tuning part and a validation part (seeded)."""
    images = run.splits.images(run.data, "repair")
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, int(round(val_fraction * len(images))))
    return images.subset(np.sort(order[n_val:])), images.subset(np.sort(order[:n_val]))


def explain_repair_split(
    cfg: DictConfig, run: TrainRun, clock: StageClock
) -> tuple[Attribution, Topology, Path | None]:
    """Attribution on the repair split: over the train run's detector on the split's benign and
    adversarial IPGs (built through the same cache as train.py's), or, for `flow_difference`,
    from the model's dense IPGs of the split's inputs and their adversarial versions. Returns
    the attribution, the topology it is on and the detector it used (None for the flow)."""
    attack = cfg.explainer.attack
    train_cfg = copy.deepcopy(run.cfg)
    if attack not in train_cfg.attack:
        raise ValueError(
            f"explainer.attack={attack} was not an attack of the train run "
            f"({', '.join(train_cfg.attack)})"
        )
    with open_dict(train_cfg):
        train_cfg.ipg.splits = ["repair"]
        train_cfg.attack = {attack: train_cfg.attack[attack]}
    e = cfg.explainer
    if e.algorithm == FLOW_EXPLAINER:
        images = run.splits.images(run.data, "repair")
        with clock("attribution"):
            seed_attack_rng(cfg.seed)
            adversarial = make_attacks(train_cfg)[attack](run.model, images.x, images.y).x_adv
            return (*flow_difference(run.model, images.x, adversarial, e.batch_size), None)
    detector_path = run.directory / "detector.pt"
    if not detector_path.is_file():
        raise FileNotFoundError(
            f"{run.directory} has no detector (detector.pt): run train.py to the end before "
            f"repair.py, or use explainer={FLOW_EXPLAINER}, which needs none"
        )
    with clock("repair_ipgs"):
        ipgs = build_ipg_datasets(
            train_cfg, run.model, run.data, run.splits, make_attacks(train_cfg)
        )
    dataset = ipg_dataset(ipgs, "repair", [attack])
    detector = load_checkpoint(detector_path, detector_arch(run.cfg, dataset.topology.num_nodes))
    with clock("attribution"):
        attribution = attribute(detector, dataset, e.algorithm, e.batch_size, e.epochs, e.lr)
    return attribution, dataset.topology, detector_path


def plan_counts(cfg: DictConfig, model: nn.Module, capture_plan, layers: list[str]) -> dict:
    """Targets per layer: `repair.k`, or `repair.fraction` of each layer's parameters."""
    counts = {}
    for layer in layers:
        if cfg.repair.k is not None:
            counts[layer] = int(cfg.repair.k)
        else:
            total = sum(p.numel() for p in model.get_submodule(layer).parameters())
            per = params_per_target(model, capture_plan, layer, cfg.repair.level)
            counts[layer] = max(1, int(cfg.repair.fraction * total // per))
    return counts


def random_plan(plan: RepairPlan, seed: int) -> RepairPlan:
    """A plan of the same layers, level and budget with targets drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    targets = {}
    for layer, chosen in plan.targets.items():
        pool = plan.layers[layer]["units" if plan.level == "node" else "edges"]
        pick = torch.randperm(len(pool), generator=generator)[: len(chosen)].tolist()
        targets[layer] = (
            [pool[i][0] for i in pick]
            if plan.level == "node"
            else [[pool[i][0], pool[i][3]] for i in pick]
        )
    return RepairPlan(
        plan.fingerprint, plan.level, plan.layers, targets, {**plan.provenance, "random": True}
    )


def planned_units(plan: RepairPlan) -> dict[str, list[int]]:
    """The units each plan touches: its node targets, or the units its edges feed."""
    if plan.level == "node":
        return {layer: list(t) for layer, t in plan.targets.items()}
    return {layer: sorted({unit for _, unit in t}) for layer, t in plan.targets.items()}


def weight_layers(capture_plan) -> list[str]:
    """The model's weight layers (Linear, Conv) in forward order: what a repair can change."""
    return [op.layer.name for op in capture_plan.ops if op.kind != "add"]


def _method_targets(
    name: str, model: nn.Module, plan: RepairPlan, capture_plan, seed: int
) -> tuple[Masks, dict[str, list[int]]]:
    """What a fine-tuning method may change, and the units it repairs (those the optional
    consistency term keeps close to their clean values)."""
    if name in ("targeted", "random"):
        chosen = plan if name == "targeted" else random_plan(plan, seed)
        return plan_masks(model, chosen, capture_plan), planned_units(chosen)
    layers = weight_layers(capture_plan)
    if name == "last_layer":
        layers, masks = layers[-1:], layer_masks(model, layers[-1:])
    else:
        masks = all_masks(model)
    units = {lay: list(range(model.get_submodule(lay).weight.shape[0])) for lay in layers}
    return masks, units


def finetune_settings(repair: DictConfig, method: str) -> dict[str, Any]:
    """`repair.finetune` with the method's own overrides (`repair.finetune_overrides.<method>`):
    a few units and every weight need not share a step size or schedule to be compared fairly."""
    known = ("targeted", *BASELINES)
    if method not in known:
        raise ValueError(f"repair.finetune_overrides names {method!r}; known: {', '.join(known)}")
    overrides = (repair.get("finetune_overrides") or {}).get(method) or {}
    unknown = set(overrides) - set(repair.finetune)
    if unknown:
        raise ValueError(
            f"repair.finetune_overrides.{method} sets unknown settings {sorted(unknown)}; "
            f"known: {', '.join(repair.finetune)}"
        )
    return {**repair.finetune, **overrides}


def validation_attacks(attacks: dict[str, Attack], names: list[str]) -> dict[str, Attack]:
    """The evaluation attacks also run on the repair split's validation part: the numbers to
    choose repair settings on, so that the test split is never used for that."""
    unknown = [n for n in names if n not in attacks]
    if unknown:
        raise ValueError(
            f"repair.val_attacks names {', '.join(unknown)}, not among the evaluation attacks "
            f"({', '.join(attacks)})"
        )
    return {n: attacks[n] for n in names}


def run_repair(cfg: DictConfig) -> dict[str, Any]:
    """Attribution -> plan -> targeted repair -> baselines -> evaluation; writes
    `repair_plan.json`, `repair_plan.png`, `repaired.pt`, `repair_report.{json,md}` and
    `finetune_curves.png`, and sends the report's numbers to the configured loggers."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(cfg.repair.baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown repair baselines {sorted(unknown)}; known: {BASELINES}")
    if cfg.repair.random_draws < 1:
        raise ValueError(f"repair.random_draws must be >= 1; got {cfg.repair.random_draws}")
    for method in cfg.repair.get("finetune_overrides") or {}:
        finetune_settings(cfg.repair, method)  # a typo fails now, not after attribution
    clock = StageClock()
    train_dir = Path(cfg.train_dir) if cfg.train_dir else latest_train_run(cfg.paths.log_dir)
    run = load_train_run(train_dir)
    with open_dict(cfg):
        cfg.dataset = run.cfg.dataset  # attacks take their budget from the train run's dataset
    OmegaConf.save(cfg, out / "repair_config.yaml", resolve=True)
    loggers = make_loggers(cfg)
    attacks = make_attacks(cfg)
    val_attacks = validation_attacks(attacks, list(cfg.repair.val_attacks))
    attribution, topology, detector_path = explain_repair_split(cfg, run, clock)
    fine_tune, val = repair_split_parts(run, cfg.repair.val_fraction, cfg.seed)
    capture_plan = trace(run.model, fine_tune.x[:1], topology.config.include_input)
    repairable = weight_layers(capture_plan)
    layer = cfg.repair.layer
    layers = [layer] if isinstance(layer, str) else list(layer or [])
    unknown = [name for name in layers if name not in repairable]
    if unknown:
        raise PlanError(
            f"no weight layer {', '.join(unknown)} in this model; valid layers: "
            f"{', '.join(repairable)}"
        )
    plan = make_plan(
        attribution,
        topology,
        cfg.repair.level,
        layers,
        plan_counts(cfg, run.model, capture_plan, layers or repairable),
        {
            "train_dir": str(train_dir),
            "detector": detector_path and str(detector_path),
            "explainer_attack": cfg.explainer.attack,
        },
    )
    plan.save(out / "repair_plan.json")
    plot_plan(plan, out / "repair_plan.png")
    test = run.splits.images(run.data, "test")

    def evaluate(model: nn.Module, **kw) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Test-split evaluation, plus the validation numbers that settings are chosen on."""
        report, examples = evaluate_attacks(
            model, test, attacks, cfg.eval_batch_size, cfg.seed, **kw
        )
        report["val"], _ = evaluate_attacks(model, val, val_attacks, cfg.eval_batch_size, cfg.seed)
        return report, examples

    with clock("evaluate_before"):
        before, original_adv = evaluate(run.model)
    train_attack = instantiate(cfg.repair.train_attack)

    def repair_and_evaluate(name: str, tag: str, plan_seed: int) -> tuple[nn.Module, dict]:
        """One method's repaired model and its numbers, timed as `repair_<tag>` and
        `evaluate_<tag>` (`plan_seed`: the random plan's draw)."""
        with clock(f"repair_{tag}"):
            if name == "activation_patch":
                units = planned_units(plan)
                model = ActivationPatch(
                    run.model,
                    {
                        lay: (u, mean_unit_outputs(run.model, lay, u, fine_tune))
                        for lay, u in units.items()
                    },
                )
                info = {
                    "params_changed": 0,
                    "params_changed_fraction": 0.0,
                    "params_allowed": 0,
                    "units_patched": sum(map(len, units.values())),
                }
            else:
                model = copy.deepcopy(run.model)
                masks, units = _method_targets(name, model, plan, capture_plan, plan_seed)
                info = masked_finetune(
                    model,
                    masks,
                    fine_tune,
                    val,
                    train_attack,
                    consistency_units=units,
                    seed=cfg.seed,
                    **finetune_settings(cfg.repair, name),
                )
                info["params_allowed"] = count_allowed(masks)
        info["repair_seconds"] = clock.seconds[f"repair_{tag}"]
        with clock(f"evaluate_{tag}"):
            evaluation, _ = evaluate(model, transfer_from=original_adv)
        log.info("%s: clean %.4f, adv %s", tag, evaluation["clean_acc"], evaluation["adv_acc"])
        return model, {**evaluation, **info}

    results = {}
    for name in ["targeted", *cfg.repair.baselines]:
        if name == "random" and cfg.repair.random_draws > 1:
            draws = [
                repair_and_evaluate(name, f"random_{d}", cfg.seed + d)[1]
                for d in range(cfg.repair.random_draws)
            ]
            results[name] = {**mean_results(draws), "draws": draws}
            continue
        model, results[name] = repair_and_evaluate(name, name, cfg.seed)
        if name == "targeted":
            save_checkpoint(
                out / "repaired.pt",
                model,
                target_arch(run.cfg, run.data),
                {"plan": str(out / "repair_plan.json")},
            )
    histories, tolerances = {}, {}
    for name, r in results.items():
        for d, one in enumerate(r.get("draws", [r])):
            if "history" in one:
                key = f"{name} {d}" if "draws" in r else name
                histories[key] = one["history"]
                tolerances[key] = finetune_settings(cfg.repair, name)["tolerance"]
    curves = plot_finetune_curves(
        histories, before["val"]["clean_acc"], tolerances, out / "finetune_curves.png"
    )
    report = {
        "train_dir": str(train_dir),
        "n_test": len(test),
        "before": before,
        "after": results.pop("targeted"),
        "baselines": results,
        "plan": {
            "level": plan.level,
            "explainer": cfg.explainer.algorithm,
            "targets": {lay: len(t) for lay, t in plan.targets.items()},
        },
        "timing_s": clock.seconds,
    }
    (out / "repair_report.json").write_text(json.dumps(report, indent=2))
    (out / "repair_report.md").write_text(markdown_report(report))
    publish(loggers, flat_metrics(report), [out / "repair_plan.png", curves])
    return report
