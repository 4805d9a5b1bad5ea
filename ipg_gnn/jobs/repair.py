"""The `repair.py` job: attribution -> repair plan -> targeted repair and baselines ->
evaluation on the test split, for one `train.py` run.

The objective of the repair config (`objective`) evaluates models and gives the repair loss; the
train run's objective gives the contrast population the attributor explains. Explainers and
repair methods are `_target_` configs (`explainer`, `repair.methods`), so this job never asks
which one it runs.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.explain import Attribution, Attributor
from ipg_gnn.graphs import IPGDataset, Topology
from ipg_gnn.jobs.checks import ConfigError, RepairSettings, check_settings
from ipg_gnn.jobs.stages import (
    build,
    build_ipg_datasets,
    fit_cached,
    ipg_dataset,
    make_objective,
    split_inputs,
)
from ipg_gnn.objectives import Contrast, FitModel, Objective, Population, RepairLoss
from ipg_gnn.plan import Level, PlanError, RepairPlan, choose_targets, make_plan
from ipg_gnn.plan.plot import plot_plan
from ipg_gnn.provenance import CapturePlan, trace
from ipg_gnn.repair import (
    RepairContext,
    RepairMethod,
    params_per_target,
    plan_masks,
    unit_parameters,
)
from ipg_gnn.repair.allocation import LookaheadAllocation
from ipg_gnn.repair.lookahead import check_lookahead_inputs
from ipg_gnn.repair.report import flat_metrics, markdown_report, mean_results, plot_finetune_curves
from ipg_gnn.runs.checkpoints import save_checkpoint
from ipg_gnn.runs.io import atomic_save, atomic_write_text
from ipg_gnn.runs.keys import model_fingerprint
from ipg_gnn.runs.run_dir import RunDirectoryError, RunRecord, claim
from ipg_gnn.runs.tracking import StageClock, make_loggers, publish
from ipg_gnn.runs.train_run import (
    TrainRun,
    latest_train_run,
    load_train_run,
    target_arch,
)

log = logging.getLogger(__name__)


def repair_split_parts(run: TrainRun, val_fraction: float, seed: int) -> tuple[Images, Images]:
    """The repair split cut into a fine-tuning part and a validation part (seeded)."""
    images = run.splits.images(run.data, "repair")
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, int(round(val_fraction * len(images))))
    return images.subset(np.sort(order[n_val:])), images.subset(np.sort(order[:n_val]))


def repair_parts(cfg: DictConfig, run: TrainRun, objective: Objective) -> tuple[Images, Images]:
    """The repair set the objective makes from the fine-tuning part (`Objective.repair_set`,
    given the original model), and the validation part: what every repair job works on."""
    fine_tune, val = repair_split_parts(run, cfg.repair.val_fraction, cfg.seed)
    inputs = split_inputs(run.data, run.splits)
    return objective.repair_set(fine_tune, inputs, reference_fitter(run), cfg.seed, run.model), val


def reference_fitter(run: TrainRun) -> FitModel:
    """Trains a fresh model like the run's target on given inputs, seeded, or loads it from
    the cache (`fit_cached`): an objective's reference models (a privacy repair's)."""
    arch = target_arch(run.cfg, run.data)
    return lambda images, seed: fit_cached(run.cfg, arch, images, seed, "references")


def make_methods(cfg: DictConfig, objective: Objective) -> dict[str, RepairMethod]:
    """`targeted` and the configured baselines, from `repair.methods`, checked before any
    work: unknown names, overrides of unknown settings and loss values the objective cannot use
    fail here."""
    names = ["targeted", *cfg.repair.baselines]
    unknown = [n for n in names if n not in cfg.repair.methods]
    if unknown:
        raise ConfigError(
            f"repair.baselines: unknown repair methods {unknown}; known: "
            f"{', '.join(cfg.repair.methods)}"
        )
    methods = {n: build(cfg.repair.methods[n], f"repair.methods.{n}") for n in names}
    loss = dict(getattr(objective, "loss", {}))
    for name, method in methods.items():
        method.check(name, list(cfg.repair.finetune), list(loss))
        objective.check_loss({**loss, **method.loss})
    return methods


@dataclass
class RepairComponents:
    """What `repair.py`'s settings build, once, before any expensive work."""

    objective: Objective
    methods: dict[str, RepairMethod]
    attributor: Attributor
    allocation: LookaheadAllocation | None  # null: the budget as it falls per layer


def repair_components(cfg: DictConfig, run: TrainRun) -> RepairComponents:
    """The objective, the repair methods, the attributor and the allocation, every setting
    checked before any expensive work (bad names, overrides, evaluations and layers fail here)."""
    objective = make_objective(cfg)
    methods = make_methods(cfg, objective)
    for name, method in methods.items():
        method.check_model(f"repair.methods.{name}", run.model)
    unknown = sorted(set(cfg.repair.val_evaluations) - set(objective.evaluation_names()))
    if unknown:
        raise ConfigError(
            f"repair.val_evaluations names {unknown}, not among the objective's evaluations "
            f"({', '.join(objective.evaluation_names())})"
        )
    attributor: Attributor = build(cfg.explainer, "explainer")
    allocation = (
        build(cfg.repair.allocation, "repair.allocation") if cfg.repair.get("allocation") else None
    )
    contrasts = make_objective(run.cfg).contrasts()
    if attributor.contrast not in contrasts:
        raise ConfigError(
            f"explainer.contrast={attributor.contrast} is not a contrast population of the "
            f"train run {run.directory} ({', '.join(contrasts)}); pick one of those"
        )
    example = run.splits.images(run.data, "repair").x[:1]
    planned_layers(cfg, trace(run.model, example).weight_layers())
    if cfg.repair.plan and not Path(cfg.repair.plan).is_file():
        raise ConfigError(f"repair.plan={cfg.repair.plan}: no such file (a repair_plan.json)")
    return RepairComponents(objective, methods, attributor, allocation)


@dataclass
class RepairSplitSource:
    """What an attributor may ask of the train run, built only when asked for: the repair
    split, the train objective's contrast populations, their IPGs, the detector."""

    cfg: DictConfig
    run: TrainRun
    objective: Objective  # the train run's: its contrasts are the populations explained
    clock: StageClock
    used_detector: Path | None = field(default=None, init=False)

    @property
    def model(self) -> nn.Module:
        return self.run.model

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def inputs(self) -> Images:
        return self.run.splits.images(self.run.data, "repair")

    def contrast(self, name: str) -> Contrast:
        contrasts = self.objective.contrasts()
        if name not in contrasts:
            raise ConfigError(f"{name} is not a contrast population of the train run")
        return contrasts[name]

    def reference(self) -> Population:
        return self.objective.reference_population()

    def select(self, population: Population) -> Images:
        return population.select("repair", split_inputs(self.run.data, self.run.splits)).images

    def ipg_dataset(self, contrast: str) -> IPGDataset:
        self.contrast(contrast)
        with self.clock("repair_ipgs"):
            ipgs = build_ipg_datasets(
                self.run.cfg,
                self.run.model,
                self.run.data,
                self.run.splits,
                self.objective,
                ["repair"],
                [contrast],
            )
        return ipg_dataset(ipgs, "repair", [contrast])

    def detector(self, num_nodes: int) -> nn.Module:
        self.used_detector = self.run.directory / "detector.pt"
        return self.run.detector(num_nodes)

    def repair_loss(self) -> RepairLoss:
        objective = make_objective(self.cfg)
        try:
            return plain_repair_loss(objective, self.seed)
        except ConfigError as e:
            raise ConfigError(
                f"explainer.loss: the {type(objective).__name__} objective cannot make "
                f"its repair loss before the repair starts ({e}); use explainer.loss=contrast"
            ) from e


def plain_repair_loss(objective: Objective, seed: int) -> RepairLoss:
    """The objective's repair loss without the consistency term, which needs the repaired
    units: one loss that scores any plan alike."""
    loss = getattr(objective, "loss", {})
    off = {"consistency_weight": 0.0} if "consistency_weight" in loss else {}
    return objective.repair_loss({}, seed, **off)


def plan_counts(cfg: DictConfig, model: nn.Module, capture_plan, layers: list[str]) -> dict:
    """Targets per layer: `repair.k` (one number for every layer, or a list matching
    `repair.layer`), or `repair.fraction` of each layer's parameters."""
    k = cfg.repair.k
    counts = {}
    for i, layer in enumerate(layers):
        if k is not None:
            counts[layer] = int(k[i] if OmegaConf.is_list(k) else k)
        else:
            per = params_per_target(model, capture_plan, layer, cfg.repair.level)
            owned = (
                unit_parameters(model, capture_plan, layer).values()
                if cfg.repair.level == "node"
                else model.get_submodule(layer).parameters()
            )
            total = sum(p.numel() for p in owned)
            counts[layer] = max(1, int(cfg.repair.fraction * total // per))
    return counts


def check_counts(cfg: DictConfig) -> None:
    """`repair.k` as a list gives one count per layer of `repair.layer`, which must list as
    many (checked before any work)."""
    k, layer = cfg.repair.k, cfg.repair.layer
    if OmegaConf.is_list(k) and not (OmegaConf.is_list(layer) and len(layer) == len(k)):
        raise ConfigError(
            f"repair.k={list(k)} gives one count per layer: repair.layer must list {len(k)} "
            f"layers; got {layer}"
        )


def planned_layers(cfg: DictConfig, repairable: list[str]) -> list[str]:
    """`repair.layer` as a list (empty: every repairable layer), checked against the model."""
    layer = cfg.repair.layer
    layers = [layer] if isinstance(layer, str) else list(layer or [])
    unknown = [name for name in layers if name not in repairable]
    if unknown:
        raise PlanError(
            f"no weight layer {', '.join(unknown)} in this model; valid layers: "
            f"{', '.join(repairable)}"
        )
    return layers


def make_repair_plan(
    cfg: DictConfig,
    run: TrainRun,
    attribution: Attribution,
    topology: Topology,
    capture_plan,
    provenance: Mapping[str, Any],
) -> RepairPlan:
    """The plan of `repair.level` targets over `repair.layer`, under the configured budget."""
    repairable = capture_plan.weight_layers()
    layers = planned_layers(cfg, repairable)
    counts = plan_counts(cfg, run.model, capture_plan, layers or repairable)
    return make_plan(attribution, topology, cfg.repair.level, layers, counts, provenance)


def reused_plan(
    cfg: DictConfig, run: TrainRun, example: torch.Tensor
) -> tuple[RepairPlan, CapturePlan]:
    """The ranking of a saved plan (`repair.plan`, made for this run's model) with targets
    chosen anew for `repair.layer`, `level` and budget: the jobs of a budget or layer sweep
    share one attribution instead of each running the explainer again. Returns it and the
    capture plan its edges refer to."""
    path = Path(cfg.repair.plan)
    ranked = RepairPlan.load(path)
    ranked.check_model(model_fingerprint(run.model))
    if "include_input" not in ranked.provenance and cfg.repair.level == "edge":
        raise PlanError(f"{path} predates recorded input nodes; reuse it at node level only")
    capture_plan = trace(run.model, example, ranked.provenance.get("include_input", False))
    layers = planned_layers(cfg, capture_plan.weight_layers())
    pool = "units" if cfg.repair.level == "node" else "edges"
    counts = plan_counts(
        cfg, run.model, capture_plan, layers or [n for n, r in ranked.layers.items() if r[pool]]
    )
    targets = choose_targets(ranked.layers, cfg.repair.level, layers, counts)
    return ranked.retargeted(targets, cfg.repair.level, reused_from=str(path)), capture_plan


@dataclass
class Allocation:
    """Spreads a new plan's budget over its layers by `spread` (`repair.allocation`, see
    `ipg_gnn.repair.allocation`; None: as made, `repair.fraction` of each layer)."""

    spread: LookaheadAllocation | None
    cfg: DictConfig
    model: nn.Module
    objective: Objective
    fine_tune: Images
    val: Images

    def __post_init__(self) -> None:
        if self.spread is not None:
            check_lookahead_inputs(self.spread.steps, self.spread.batch_size, len(self.fine_tune))

    def __call__(self, plan: RepairPlan, capture_plan: CapturePlan) -> RepairPlan:
        spread = self.spread  # narrowed for the closure
        if spread is None:
            return plan
        pool = Level(plan.level).pool_key
        costs = {
            layer: params_per_target(self.model, capture_plan, layer, plan.level)
            for layer in plan.targets
        }
        budget = sum(len(t) * costs[layer] for layer, t in plan.targets.items())
        loss = plain_repair_loss(self.objective, self.cfg.seed)

        def gain_of(counts: dict[str, int]) -> float:
            trial = replace(plan, targets=self._targets(plan, counts))
            masks = plan_masks(self.model, trial, capture_plan)
            return spread.gain(self.model, masks, self.fine_tune, self.val, loss, self.cfg.seed)

        counts, rounds = spread.allocate(
            {layer: len(plan.layers[layer][pool]) for layer in plan.targets}, costs, budget, gain_of
        )
        for r in rounds:
            log.info(
                "allocation: %s (%d parameters); gains %s", r["taken"], r["params"], r["gains"]
            )
        targets = self._targets(plan, counts)
        return plan.retargeted(targets, allocation={"budget": budget, "rounds": rounds})

    @staticmethod
    def _targets(plan: RepairPlan, counts: Mapping[str, int]) -> dict[str, list]:
        kept = {layer: n for layer, n in counts.items() if n}
        return choose_targets(plan.layers, plan.level, list(kept), kept)


@dataclass
class Evaluation:
    """The objective's evaluation of a model on the test split, plus the validation numbers
    that settings are chosen on (`val_names` of the objective's evaluations)."""

    objective: Objective
    test: Images
    val: Images
    val_names: list[str]
    batch_size: int
    seed: int

    def __call__(
        self, model: nn.Module, transfer_from: Mapping | None = None
    ) -> tuple[dict[str, Any], dict]:
        report, examples = self.objective.evaluate(
            model, self.test, self.batch_size, self.seed, transfer_from=transfer_from
        )
        report["val"], _ = self.objective.evaluate(
            model, self.val, self.batch_size, self.seed, only=self.val_names
        )
        return report, examples


@dataclass
class Finished:
    """What a repair run has finished, kept in its directory and recorded with checksums in
    `run.json`: the same command run again into the same directory takes each recorded step as
    done (the plan, the original's evaluation, each method's draws) and computes only the rest,
    so an interrupted sweep job loses at most the draw it was in. A draw counts as done only
    with its model file intact. What an objective notes during a draw is part of the draw's
    result; its summary of the whole repair (a backdoor's reversal) is kept as
    `objective_notes.pt` for a process that runs no draw needing it."""

    out: Path
    record: RunRecord
    arch: Mapping[str, Any]
    resumed: list[str] = field(default_factory=list)

    def load(self, name: str) -> Any | None:
        """The saved object `name` (torch format), if recorded and unchanged; else None."""
        if not self.record.holds(name):
            return None
        self.resumed.append(name)
        return self._read(name)

    def _read(self, name: str) -> Any:
        return torch.load(self.out / name, map_location="cpu", weights_only=True)

    def save(self, name: str, obj: Any) -> None:
        atomic_save(obj, self.out / name)
        self.record.add(name)

    def load_draw(self, tag: str) -> dict[str, Any] | None:
        """A finished draw's result, if it and its model file are recorded and unchanged."""
        name = f"draws/{tag}.pt"
        if not self.record.holds(name):
            return None
        saved = self._read(name)
        if saved["model"] is not None and not self.record.holds(saved["model"]):
            return None
        self.resumed.append(name)
        return saved["result"]

    def save_draw(self, tag: str, name: str, result: dict, model: nn.Module | None) -> None:
        """A finished draw: its model (None: an inference-time patch, no checkpoint of the
        architecture), then its result."""
        if model is not None:
            plan = {"plan": str(self.out / "repair_plan.json")}
            save_checkpoint(
                self.out / checkpoint_name(tag),
                model,
                self.arch,
                plan if tag == "targeted" else {"method": name},
            )
            self.record.add(checkpoint_name(tag))
        self.save(
            f"draws/{tag}.pt",
            {"result": result, "model": None if model is None else checkpoint_name(tag)},
        )


def checkpoint_name(tag: str) -> str:
    """Where a method's model is kept: the targeted repair's `repaired.pt`, every other draw's
    `models/<tag>.pt`."""
    return "repaired.pt" if tag == "targeted" else f"models/{tag}.pt"


def run_methods(
    methods: Mapping[str, RepairMethod],
    ctx: RepairContext,
    evaluate: Evaluation,
    original_examples: Mapping,
    clock: StageClock,
    finished: Finished,
) -> dict[str, Any]:
    """Every method's repaired model, evaluated (timed as `repair_<tag>`, `evaluate_<tag>`; a
    method of several draws reports their mean, each draw under `draws`; tags:
    `RepairMethod.draw_tags`). Each draw's model (`checkpoint_name`; not an inference-time
    patch, which is no checkpoint of the architecture) and numbers (`draws/<tag>.pt`) are saved
    as it ends, and a draw `finished` holds is not run again. Returns the results."""
    results = {}
    for name, method in methods.items():
        draws = []
        for d, tag in method.draw_tags(name).items():
            result = finished.load_draw(tag)
            if result is None:
                with clock(f"repair_{tag}"):
                    model, info = method(ctx, d)
                info["repair_seconds"] = clock.seconds[f"repair_{tag}"]
                notes = ctx.objective.draw_notes()
                with clock(f"evaluate_{tag}"):
                    evaluation, _ = evaluate(model, transfer_from=original_examples)
                result = {**evaluation, **info, **({"draw": d} if tag != name else {})}
                if notes:
                    result["objective"] = notes
                kept = model if type(model) is type(ctx.model) else None
                finished.save_draw(tag, name, result, kept)
            log.info("%s: %s", tag, ctx.objective.columns(result))
            draws.append(result)
        results[name] = draws[0] if len(draws) == 1 else {**mean_results(draws), "draws": draws}
    return results


def finetune_curves(
    results: Mapping[str, Mapping],
    methods: Mapping[str, RepairMethod],
    ctx: RepairContext,
    start: float,
    path: Path,
) -> Path:
    """Validation clean accuracy along every fine-tuning run (each random draw its own)."""
    histories, tolerances = {}, {}
    for name, r in results.items():
        for d, one in enumerate(r.get("draws", [r])):
            if "history" in one:
                key = f"{name} {d}" if "draws" in r else name
                histories[key] = one["history"]
                tolerances[key] = methods[name].schedule(ctx)["tolerance"]
    return plot_finetune_curves(histories, start, tolerances, path)


def repair_device(name: str) -> torch.device:
    """The device of `device=`: `auto` takes a CUDA GPU when torch sees one; `cuda` without one
    is refused before any work."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but torch sees no CUDA GPU here; use device=auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def run_repair(cfg: DictConfig) -> dict[str, Any]:
    """Attribution -> plan -> targeted repair -> baselines -> evaluation; writes
    `repair_plan.json`, `repair_plan.png`, `repaired.pt` (the targeted repair),
    `models/<baseline>.pt` (each baseline's model; `<baseline>_<d>.pt` for each draw of several),
    `repair_report.{json,md}` and
    `finetune_curves.png`, and sends the report's numbers to the configured loggers. Run again
    into the same directory with the same config, it resumes (`Finished`: `evaluation_before.pt`
    and `draws/<tag>.pt` hold what it takes as done)."""
    check_settings(cfg, RepairSettings)
    check_counts(cfg)
    device = repair_device(cfg.device)
    train_dir = Path(cfg.train_dir) if cfg.train_dir else latest_train_run(cfg.paths.log_dir)
    run = load_train_run(train_dir)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.dataset = run.cfg.dataset  # attacks take their budget from the train run's dataset
        cfg.device = device.type  # as resolved: a resumed run never mixes devices
    components = repair_components(cfg, run)
    out = Path(cfg.paths.output_dir)
    with claim(out, "repair", cfg) as record:
        report = _repair(cfg, run, components, out, record, device)
        record.finish()
    return report


def planned(
    cfg: DictConfig,
    run: TrainRun,
    attributor: Attributor,
    example: torch.Tensor,
    clock: StageClock,
    finished: Finished,
    allocation: Allocation,
) -> tuple[RepairPlan, CapturePlan]:
    """The run's plan and the capture plan its edges refer to: the one this directory already
    holds (resumed), or a saved plan's ranking (`repair.plan`) or a new attribution, its budget
    spread by `allocation`."""
    if finished.record.holds("repair_plan.json"):
        finished.resumed.append("repair_plan.json")
        plan = RepairPlan.load(finished.out / "repair_plan.json")
        if plan.fingerprint != model_fingerprint(run.model):
            raise RunDirectoryError(
                f"{finished.out} holds a repair of another model than {run.directory}'s (was "
                "that train run made again?); give this run its own hydra.run.dir, or delete "
                "that directory"
            )
        return plan, trace(run.model, example, plan.provenance.get("include_input", False))
    if cfg.repair.plan:
        plan, capture_plan = reused_plan(cfg, run, example)
    else:
        source = RepairSplitSource(cfg, run, make_objective(run.cfg), clock)
        with clock("attribution"):
            attribution, topology = attributor(source)
        include_input = topology.config.include_input
        capture_plan = trace(run.model, example, include_input)
        plan = make_repair_plan(
            cfg,
            run,
            attribution,
            topology,
            capture_plan,
            {
                "train_dir": str(run.directory),
                "train_run": run.record.run_id,
                "detector": source.used_detector and str(source.used_detector),
                "explainer_contrast": attributor.contrast,
                "include_input": include_input,
            },
        )
    with clock("allocation"):
        plan = allocation(plan, capture_plan)
    plan.save(finished.out / "repair_plan.json")
    finished.record.add("repair_plan.json")
    return plan, capture_plan


def _repair(
    cfg: DictConfig,
    run: TrainRun,
    components: RepairComponents,
    out: Path,
    record: RunRecord,
    device: torch.device,
) -> dict[str, Any]:
    objective, methods = components.objective, components.methods
    fine_tune, val = repair_parts(cfg, run, objective)
    OmegaConf.save(cfg, out / "repair_config.yaml", resolve=True)
    record.add("repair_config.yaml")
    loggers = make_loggers(cfg)
    clock = StageClock()
    finished = Finished(out, record, target_arch(run.cfg, run.data))
    allocation = Allocation(components.allocation, cfg, run.model, objective, fine_tune, val)
    plan, capture_plan = planned(
        cfg, run, components.attributor, fine_tune.x[:1], clock, finished, allocation
    )
    plot_plan(plan, out / "repair_plan.png")

    run.model.to(device)
    test = run.splits.images(run.data, "test")
    val_names = list(cfg.repair.val_evaluations)
    evaluate = Evaluation(objective, test, val, val_names, cfg.eval_batch_size, cfg.seed)
    before_file = finished.load("evaluation_before.pt")
    if before_file is None:
        with clock("evaluate_before"):
            before, original_examples = evaluate(run.model)
        finished.save("evaluation_before.pt", {"report": before, "examples": original_examples})
    else:
        before, original_examples = before_file["report"], before_file["examples"]
    finetune = dict(cfg.repair.finetune)
    ctx = RepairContext(
        run.model, plan, capture_plan, fine_tune, val, objective, finetune, cfg.seed
    )
    results = run_methods(methods, ctx, evaluate, original_examples, clock, finished)
    if finished.resumed:
        log.info("resumed: took %s as done from an earlier run", ", ".join(finished.resumed))
    objective_notes = objective.repair_artifacts(out)
    if objective_notes:
        finished.save("objective_notes.pt", objective_notes)
    else:
        objective_notes = finished.load("objective_notes.pt") or {}
    curves = finetune_curves(
        results, methods, ctx, before["val"]["clean_acc"], out / "finetune_curves.png"
    )
    report = {
        "train_dir": str(run.directory),
        "n_test": len(test),
        "before": before,
        "after": results.pop("targeted"),
        "baselines": results,
        "plan": {
            "level": plan.level,
            "explainer": plan.provenance["explainer"],
            "targets": {lay: len(t) for lay, t in plan.targets.items()},
            "arbitrary_targets": plan.provenance.get("arbitrary_targets", {}),
        },
        "timing_s": clock.seconds,
        **({"resumed": finished.resumed} if finished.resumed else {}),
        **({"objective": objective_notes} if objective_notes else {}),
    }
    atomic_write_text(json.dumps(report, indent=2), out / "repair_report.json")
    atomic_write_text(markdown_report(report, objective), out / "repair_report.md")
    record.add("repair_report.json")
    publish(loggers, flat_metrics(report), [out / "repair_plan.png", curves])
    return report
