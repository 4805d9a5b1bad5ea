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
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from omegaconf import DictConfig, open_dict

from ipg_gnn.errors import ConfigError
from ipg_gnn.jobs.checks import RepairSettings, check_settings
from ipg_gnn.jobs.repair import (
    RepairSplitSource,
    make_repair_plan,
    plain_repair_loss,
    repair_device,
    repair_parts,
)
from ipg_gnn.jobs.stages import build, make_objective
from ipg_gnn.plan import Level, PlanError
from ipg_gnn.provenance import trace
from ipg_gnn.repair import plan_masks
from ipg_gnn.repair.lookahead import check_lookahead_inputs, lookahead_gain
from ipg_gnn.runs.io import atomic_write_text
from ipg_gnn.runs.run_dir import claim
from ipg_gnn.runs.tracking import StageClock
from ipg_gnn.runs.train_run import latest_train_run, load_train_run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


def run_plan_quality(cfg: DictConfig) -> dict[str, Any]:
    """Score every explainer's plan and random plans at every budget (module docstring)."""
    check_settings(cfg, RepairSettings)
    study = cfg.study
    if cfg.repair.k is not None:
        raise ConfigError(
            f"plan_quality sweeps study.fractions, which repair.k={cfg.repair.k} would override "
            "(a count per layer fixes the budget): set repair.k=null"
        )
    train_dir = Path(cfg.train_dir) if cfg.train_dir else latest_train_run(cfg.paths.log_dir)
    device = repair_device(cfg.device)
    run = load_train_run(train_dir)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.dataset = run.cfg.dataset
        cfg.device = device.type
    objective = make_objective(cfg)
    attributors = {n: build(c, f"study.explainers.{n}") for n, c in study.explainers.items()}
    update = build(study.update, "study.update") if study.get("update") else None
    fine_tune, val = repair_parts(cfg, run, objective)
    check_lookahead_inputs(study.steps, study.batch_size, len(fine_tune))
    out = Path(cfg.paths.output_dir)
    clock = StageClock()
    model = copy.deepcopy(run.model).to(device)  # the look-ahead's; attribution stays on the CPU
    loss = plain_repair_loss(objective, cfg.seed)

    def gain(plan, capture_plan) -> float:
        masks = plan_masks(model, plan, capture_plan)
        return lookahead_gain(
            model, masks, fine_tune, val, loss, study.steps, study.lr, study.batch_size,
            cfg.seed, update,
        )["gain"]  # fmt: skip

    results: dict[str, Any] = {"fractions": list(study.fractions), "explainers": {}}
    random_gains: dict[tuple, list[float]] = {}  # by budget: plans of equal layers share them
    with claim(out, "plan_quality", cfg) as record:
        source = RepairSplitSource(cfg, run, make_objective(run.cfg), clock)
        for name, attributor in attributors.items():
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
