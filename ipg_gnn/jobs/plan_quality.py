"""The `plan_quality.py` job: how good is each explainer's plan at each budget, without full
repair runs?

On a train run, every explainer of `study.explainers` ranks the repair split once; for every
budget of `study.fractions` its plan is scored by the look-ahead (`ipg_gnn.repair.lookahead`:
the relative fall of the objective's repair loss on the repair split's validation part after a
few masked steps on its fine-tuning part; without the consistency term, which reads the planned
units, so that one loss scores every plan), beside `study.draws` random plans of the same layers,
level and budget; `study.update` (a `conf/repair/update/` config, default none: every planned
entry on its own) scores the plans under that repair mechanism (mind `study.lr`). Writes
`plan_quality.json` and `plan_quality.png` (gain against budget, one line per explainer, its
random plans as mean and spread; `device=` as in repair.py: the look-ahead on it, the
attribution on the CPU). An explainer that cannot plan the layers (e.g. a detector whose graphs
lack the first layer's incoming edges) is recorded with its error, and the study goes on. The
test split is never touched.

With `study.units.metric` set (a number of the objective's validation evaluation, e.g.
`eo_diff`), the study asks instead what a plan of one unit should name: every unit of the
planned layers is repaired alone by the `targeted` method (repair.py's full schedule and loss)
and scored by that number on the validation part, and each explainer's unit ranking is compared
with those outcomes (`unit_quality.json`, `unit_quality.png`). It costs one repair per unit, so
it suits small models and small layers.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch import nn
from tqdm.auto import tqdm

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.explain.base import Attributor, spearman
from ipg_gnn.jobs.checks import RepairSettings, check_settings
from ipg_gnn.jobs.repair import (
    RepairSplitSource,
    make_methods,
    make_repair_plan,
    plain_repair_loss,
    repair_device,
    repair_parts,
)
from ipg_gnn.jobs.stages import build, make_objective
from ipg_gnn.objectives import Objective
from ipg_gnn.plan import Level, PlanError, RepairPlan
from ipg_gnn.provenance import CapturePlan, trace
from ipg_gnn.repair import plan_masks
from ipg_gnn.repair.lookahead import check_lookahead_inputs, lookahead_gain
from ipg_gnn.repair.methods import RepairContext, RepairMethod
from ipg_gnn.repair.report import flat_metrics
from ipg_gnn.runs.io import atomic_write_text
from ipg_gnn.runs.run_dir import claim
from ipg_gnn.runs.tracking import StageClock
from ipg_gnn.runs.train_run import TrainRun, latest_train_run, load_train_run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class StudySetup:
    """What both studies build from the config and the train run before any expensive work."""

    cfg: DictConfig  # with the train run's dataset and the resolved device
    run: TrainRun
    objective: Objective
    attributors: dict[str, Attributor]
    fine_tune: Images
    val: Images
    device: torch.device

    def source(self, clock: StageClock) -> RepairSplitSource:
        return RepairSplitSource(self.cfg, self.run, make_objective(self.run.cfg), clock)


def study_setup(cfg: DictConfig) -> StudySetup:
    """The train run (`train_dir`, default the latest), the objective, the explainers and the
    repair split's parts, every setting checked first."""
    check_settings(cfg, RepairSettings)
    train_dir = Path(cfg.train_dir) if cfg.train_dir else latest_train_run(cfg.paths.log_dir)
    device = repair_device(cfg.device)
    run = load_train_run(train_dir)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.dataset = run.cfg.dataset
        cfg.device = device.type
    objective = make_objective(cfg)
    attributors = {n: build(c, f"study.explainers.{n}") for n, c in cfg.study.explainers.items()}
    fine_tune, val = repair_parts(cfg, run, objective)
    return StudySetup(cfg, run, objective, attributors, fine_tune, val, device)


def run_plan_quality(cfg: DictConfig) -> dict[str, Any]:
    """Score every explainer's plan and random plans at every budget (module docstring)."""
    if cfg.repair.k is not None:
        raise ConfigError(
            f"plan_quality sweeps study.fractions, which repair.k={cfg.repair.k} would override "
            "(a count per layer fixes the budget): set repair.k=null"
        )
    setup = study_setup(cfg)
    cfg, study, run = setup.cfg, setup.cfg.study, setup.run
    fine_tune, val = setup.fine_tune, setup.val
    update = build(study.update, "study.update") if study.get("update") else None
    check_lookahead_inputs(study.steps, study.batch_size, len(fine_tune))
    out = Path(cfg.paths.output_dir)
    clock = StageClock()
    model = copy.deepcopy(run.model).to(setup.device)  # the look-ahead's; attribution on the CPU
    loss = plain_repair_loss(setup.objective, cfg.seed)

    def gain(plan, capture_plan) -> float:
        masks = plan_masks(model, plan, capture_plan)
        return lookahead_gain(
            model, masks, fine_tune, val, loss, study.steps, study.lr, study.batch_size,
            cfg.seed, update,
        )["gain"]  # fmt: skip

    results: dict[str, Any] = {"fractions": list(study.fractions), "explainers": {}}
    random_gains: dict[tuple, list[float]] = {}  # by budget: plans of equal layers share them
    with claim(out, "plan_quality", cfg) as record:
        source = setup.source(clock)
        for name, attributor in setup.attributors.items():
            with clock(f"attribution_{name}"):
                attribution, topology = attributor(source)
            capture_plan = trace(run.model, fine_tune.x[:1], topology.config.include_input)
            row: dict[str, Any] = {"gain": [], "random_mean": [], "random_std": []}
            pool = Level(cfg.repair.level).pool_key
            for fraction in study.fractions:
                with open_dict(cfg):
                    cfg.repair.fraction = fraction
                try:
                    plan = make_repair_plan(cfg, run, attribution, topology, capture_plan, {})
                except PlanError as err:  # e.g. a detector's graph lacks the first layer's edges
                    log.warning("%s makes no plan of these layers: %s", name, err)
                    row = {"error": str(err)}
                    break
                row["gain"].append(gain(plan, capture_plan))
                sizes = ((k, len(t), len(plan.layers[k][pool])) for k, t in plan.targets.items())
                budget = (plan.level, *sorted(sizes))  # random plans come from the ranked pool
                if budget not in random_gains:
                    random_gains[budget] = [
                        gain(plan.redrawn(cfg.seed + d), capture_plan) for d in range(study.draws)
                    ]
                row["random_mean"].append(float(np.mean(random_gains[budget])))
                row["random_std"].append(float(np.std(random_gains[budget])))
                log.info(
                    "%s at %.3g: gain %.4f (random %.4f)",
                    name, fraction, row["gain"][-1], row["random_mean"][-1],
                )  # fmt: skip
            results["explainers"][name] = {**row, "stability": attribution.stability}
        results["timing_s"] = clock.seconds
        atomic_write_text(json.dumps(results, indent=2), out / "plan_quality.json")
        plot_plan_quality(results, out / "plan_quality.png")
        record.add("plan_quality.json", "plan_quality.png")
        record.finish()
    return results


def plot_plan_quality(results: dict[str, Any], path: Path) -> Path:
    """Look-ahead gain against budget: one line per explainer, and dashed with a band (mean and
    standard deviation) the random plans of the same layers and budget, drawn once for the
    explainers that share them (plans of the same layers do)."""
    fractions = results["fractions"]
    fig, ax = plt.subplots(figsize=(6, 4))
    scored = {name: r for name, r in results["explainers"].items() if "error" not in r}
    bands: dict[tuple, list[str]] = {}
    for i, (name, r) in enumerate(scored.items()):
        ax.plot(fractions, r["gain"], marker="o", color=f"C{i}", label=name)
        bands.setdefault((tuple(r["random_mean"]), tuple(r["random_std"])), []).append(name)
    for j, ((mean, std), names) in enumerate(bands.items()):
        mean, std = np.array(mean), np.array(std)
        label = "random plans" if len(bands) == 1 else f"random plans ({', '.join(names)})"
        color = "0.4" if len(bands) == 1 else f"C{len(scored) + j}"
        ax.plot(fractions, mean, color=color, linestyle="--", label=label)
        ax.fill_between(fractions, mean - std, mean + std, color=color, alpha=0.2)
    ax.set(
        xscale="log",
        xlabel="budget (fraction of each planned layer's parameters)",
        ylabel="relative fall of the repair loss (validation)",
        title="Plan quality by look-ahead",
    )
    ax.set_xticks(fractions, [f"{f:.3g}" for f in fractions], minor=False)
    ax.minorticks_off()  # log-scale minor labels collide between close budgets
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_unit_quality(cfg: DictConfig) -> dict[str, Any]:
    """Every unit of the planned layers repaired alone, and each explainer's unit ranking
    against those outcomes (module docstring)."""
    if Level(cfg.repair.level) is not Level.NODE:
        raise ConfigError(
            f"the unit study repairs units: set repair.level=node, not {cfg.repair.level}"
        )
    setup = study_setup(cfg)
    cfg, units = setup.cfg, setup.cfg.study.units
    method = make_methods(cfg, setup.objective)["targeted"]
    out = Path(cfg.paths.output_dir)
    clock = StageClock()
    with claim(out, "unit_quality", cfg) as record:
        source = setup.source(clock)
        plans, errors = {}, {}
        for name, attributor in setup.attributors.items():
            with clock(f"attribution_{name}"):
                attribution, topology = attributor(source)
            include_input = topology.config.include_input
            capture_plan = trace(setup.run.model, setup.fine_tune.x[:1], include_input)
            try:
                plan = make_repair_plan(cfg, setup.run, attribution, topology, capture_plan, {})
            except PlanError as err:
                log.warning("%s makes no plan of these layers: %s", name, err)
                errors[name] = {"error": str(err)}
                continue
            plans[name], ranked = plan, (plan, capture_plan)
        if not plans:
            raise PlanError(f"no explainer could plan these layers: {errors}")
        setup.run.model.to(setup.device)
        with clock("unit_repairs"):  # any plan names the layers and their units
            before, outcomes = unit_outcomes(setup, method, *ranked)
        results: dict[str, Any] = {
            "metric": units.metric,
            "lower_is_better": units.lower_is_better,
            "before": before,
            "outcomes": outcomes,
            "explainers": {
                **{
                    n: ranking_quality(p, outcomes, units.lower_is_better) for n, p in plans.items()
                },
                **errors,
            },
            "timing_s": clock.seconds,
        }
        atomic_write_text(json.dumps(results, indent=2), out / "unit_quality.json")
        plot_unit_quality(results, plans, out / "unit_quality.png")
        record.add("unit_quality.json", "unit_quality.png")
        record.finish()
    return results


def unit_outcomes(
    setup: StudySetup, method: RepairMethod, plan: RepairPlan, capture_plan: CapturePlan
) -> tuple[float, dict[str, list[float]]]:
    """`study.units.metric` of the objective's validation evaluation for the original model,
    and after each unit of the plan's layers is repaired alone by `method` (per layer, by unit
    index)."""
    cfg = setup.cfg
    ctx = RepairContext(
        setup.run.model, plan, capture_plan, setup.fine_tune, setup.val, setup.objective,
        cfg.repair.finetune, cfg.seed,
    )  # fmt: skip

    def metric(model: nn.Module) -> float:
        only = list(cfg.repair.val_evaluations)
        report, _ = setup.objective.evaluate(model, setup.val, cfg.eval_batch_size, cfg.seed, only)
        numbers = flat_metrics(report)
        if cfg.study.units.metric not in numbers:
            raise ConfigError(
                f"study.units.metric={cfg.study.units.metric} is not a number of the validation "
                f"evaluation ({', '.join(sorted(numbers))})"
            )
        return numbers[cfg.study.units.metric]

    before = metric(setup.run.model)  # first: a metric the evaluation lacks fails at once
    outcomes = {}
    for layer in plan.targets:
        outcomes[layer] = [
            metric(method(replace(ctx, plan=plan.retargeted({layer: [unit]})))[0])
            for unit in tqdm(range(plan.layers[layer]["num_units"]), desc=f"units of {layer}")
        ]
    return before, outcomes


def ranking_quality(
    plan: RepairPlan, outcomes: dict[str, list[float]], lower_is_better: bool
) -> dict[str, dict[str, float]]:
    """Per layer: the Spearman correlation of the explainer's unit scores with how good each
    unit's repair was (1: it ranks them exactly by outcome; None: undefined), the outcome of its
    first unit, and the median and best outcomes over the layer's units (the best unit's rank in
    its ranking)."""
    quality = {}
    for layer, values in outcomes.items():
        scores = np.zeros(len(values))
        ranks = np.zeros(len(values), dtype=int)
        for rank, (unit, score, *_) in enumerate(plan.layers[layer]["units"]):
            scores[unit], ranks[unit] = score, rank
        good = -np.asarray(values) if lower_is_better else np.asarray(values)
        best = int(np.argmax(good))
        quality[layer] = {
            "spearman": spearman(scores, good),
            "first_unit": int(np.argmin(ranks)),
            "first": values[int(np.argmin(ranks))],
            "median": float(np.median(values)),
            "best": values[best],
            "best_unit_rank": int(ranks[best]),
        }
    return quality


def plot_unit_quality(results: dict[str, Any], plans: dict[str, RepairPlan], path: Path) -> Path:
    """One panel per layer: each unit's outcome (repaired alone) against its rank in each
    explainer's ranking; the original model's value as a line."""
    outcomes = results["outcomes"]
    fig, axes = plt.subplots(1, len(outcomes), figsize=(5 * len(outcomes), 4), squeeze=False)
    for ax, (layer, values) in zip(axes[0], outcomes.items(), strict=True):
        for i, (name, plan) in enumerate(plans.items()):
            ranked = [unit for unit, *_ in plan.layers[layer]["units"]]
            rho = results["explainers"][name][layer]["spearman"]
            rho = "n/a" if rho is None else f"{rho:+.2f}"
            ax.plot(
                range(len(ranked)), [values[u] for u in ranked], "o", color=f"C{i}",
                markersize=4, alpha=0.7, label=f"{name} (Spearman {rho})",
            )  # fmt: skip
        ax.axhline(results["before"], color="0.4", linestyle="--", label="original")
        ax.set(
            xlabel="unit's rank in the explainer's ranking (0: first)",
            ylabel=f"validation {results['metric']} after repairing it alone",
            title=layer,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
