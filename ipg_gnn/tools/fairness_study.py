"""The accuracy-fairness trade-off of a fairness repair sweep, against fairlearn's mitigations.

`python repair.py -m experiment=fairness train_dir=<run> objective.loss.weight=0.5,1,2,4`
runs targeted repair, a random plan of the same budget and the same loss on every parameter at
each penalty weight. `python -m ipg_gnn.tools.fairness_study <multirun dir> [<more dirs>]
[--out <dir>]` gathers those jobs (several sweeps of one train run, e.g. plans of other layers,
are labelled by their directory's name) and runs, on the same splits of the same train run:

- fairlearn's `ExponentiatedGradient` (reductions, Agarwal et al. 2018) under a constraint on
  the study's gap (`--gap`: equalized odds, the default, or demographic parity) of each bound
  in `--bounds`. Reductions retrain the classifier many
  times with sample weights, which the torch MLP's training does not take: the estimator is a
  scikit-learn logistic regression on the same features, trained on the target's training split.
- fairlearn's `ThresholdOptimizer` (post-processing, Hardt et al. 2016) on the target MLP's
  scores, fitted on the repair split's fine-tuning part. It needs the sensitive attribute at
  prediction time, which the repaired MLPs do not.

Every method's operating point is chosen on the repair split's validation part only: the lowest
validation difference of the study's gap among the points whose validation accuracy is within
`--tolerance` of the original model's. Sweeps repeated with other repair seeds (`seed=0,1,2`:
each draws its own fine-tuning / validation partition of the repair split) make one point per
setting, the mean over the seeds, so the choice rests on every partition's validation part;
fairlearn's methods are scored (ThresholdOptimizer also fitted) on the same partitions. The
test numbers of every point are drawn as the curves; the table reports the chosen ones. Writes
`study.{md,json}`, `tradeoff.png` and `group_rates.png` into `--out` (default: the first
directory).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from fairlearn.postprocessing import ThresholdOptimizer
from fairlearn.reductions import DemographicParity, EqualizedOdds, ExponentiatedGradient, Moment
from omegaconf import OmegaConf
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.jobs.repair import repair_split_parts
from ipg_gnn.objectives.fairness import GROUPS, bootstrap_intervals, fairness_metrics
from ipg_gnn.repair.report import mean_results
from ipg_gnn.runs.io import atomic_write_text
from ipg_gnn.runs.train_run import TrainRun, load_train_run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: Report rows of a repair job, by method name in its report.
REPAIR_ROWS = {"targeted": "after", "random": "random", "all_parameters": "all_parameters"}


@dataclass(frozen=True)
class Gap:
    """The fairness gap a study chooses by and draws: its key in the numbers, fairlearn's
    reductions moment and post-processing constraint, and its names."""

    key: str
    moment: type[Moment]
    constraint: str
    short: str

    @property
    def label(self) -> str:
        return f"{self.constraint.replace('_', '-')} difference"


GAPS = {
    "equalized_odds": Gap("eo_diff", EqualizedOdds, "equalized_odds", "EO"),
    "demographic_parity": Gap("dp_diff", DemographicParity, "demographic_parity", "DP"),
}


class TorchScores(BaseEstimator, ClassifierMixin):
    """A trained torch classifier as a prefit scikit-learn estimator (`predict_proba`), for
    fairlearn's post-processing."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def fit(self, x: np.ndarray, y: np.ndarray) -> TorchScores:
        self.classes_ = np.array([0, 1])
        return self

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        rows = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        return self.model.eval()(rows.view(len(rows), 1, 1, -1)).softmax(-1).double().numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(1)


def features(images: Images) -> np.ndarray:
    """The inputs as scikit-learn's feature rows (fairlearn's estimators read these)."""
    return images.x.flatten(1).numpy()


def score(
    pred: np.ndarray, images: Images, attribute: str, bootstrap: int = 0, seed: int = 0
) -> dict[str, Any]:
    """fairlearn's metrics of predictions `pred` on `images`, with 95% bootstrap intervals
    (`bootstrap` resamples, as the objective's evaluation) when `bootstrap` > 0."""
    y, group = images.y.numpy(), images.groups[attribute].numpy()
    metrics = fairness_metrics(y, pred, group)
    if bootstrap:
        metrics["ci"] = bootstrap_intervals(y, pred, group, bootstrap, 0.95, seed)
    return metrics


def gather(directory: Path) -> list[dict[str, Any]]:
    """Every repair job under `directory`: its penalty and anchor weights and report."""
    jobs = []
    for path in sorted(directory.glob("**/repair_report.json")):
        cfg = OmegaConf.load(path.parent / "repair_config.yaml")
        loss = cfg.objective.loss
        weights = {"weight": float(loss.weight), "anchor": float(loss.get("anchor_weight", 0.0))}
        jobs.append({**weights, "seed": int(cfg.seed), "cfg": cfg, **json.loads(path.read_text())})
    if not jobs:
        raise FileNotFoundError(f"no repair_report.json under {directory}")
    return sorted(jobs, key=lambda j: (j["anchor"], j["weight"], j["seed"]))


def mean_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean of report rows of one setting repaired with several repair seeds, number by
    number (nested ones too). Each seed draws its own fine-tuning / validation partition of
    the repair split, so the mean validation numbers choose a setting on every partition's
    held-out part (repeated random sub-sampling) rather than on one small, noisy part.
    `partitions` says over how many. What is the same in every row is kept as it is; what
    differs and has no mean (histories) and one model's bootstrap intervals are dropped."""
    if len(rows) == 1:
        return dict(rows[0])
    return {**mean_results(rows, skip=("ci",), keep_same=True), "partitions": len(rows)}


def setting(job: Mapping[str, Any]) -> float | str:
    """A repair job's setting: its penalty weight, with its anchor weight when it has one."""
    return f"{job['weight']:g}, anchor {job['anchor']:g}" if job["anchor"] else job["weight"]


def repair_seeds(sweeps: Mapping[Path, Sequence[Mapping]]) -> list[int]:
    """The repair seeds every sweep was run with: each method's validation numbers must average
    the same partitions as the original's, so sweeps with other seeds are refused."""
    by_sweep = {d: sorted({j["seed"] for j in jobs}) for d, jobs in sweeps.items()}
    if len({tuple(seeds) for seeds in by_sweep.values()}) > 1:
        raise ValueError(f"the sweeps ran with different repair seeds: {by_sweep}")
    return next(iter(by_sweep.values()))


def repair_curves(jobs: Sequence[Mapping], label: str = "") -> dict[str, list[dict[str, Any]]]:
    """Per repair method (named `<method>, <label>` when a label is given), one point per
    penalty (and anchor) weight (a random plan: the mean of its draws' numbers; a weight
    repaired with several repair seeds: the mean over them, `mean_row`)."""
    rows: dict[str, dict[float | str, list[Mapping]]] = {}
    for job in jobs:
        for method, key in REPAIR_ROWS.items():
            row = job[key] if key == "after" else job["baselines"].get(key)
            if row is not None:
                name = f"{method}, {label}" if label else method
                rows.setdefault(name, {}).setdefault(setting(job), []).append(row)
    return {
        name: [{"setting": s, **mean_row(r)} for s, r in by_setting.items()]
        for name, by_setting in rows.items()
    }


def interval_resamples(bootstrap: int, partitions: int) -> int:
    """Bootstrap resamples for the baselines' intervals: `bootstrap` on one partition, none over
    several (an interval describes one model on one partition, and `mean_row` drops intervals
    that differ, so resampling there would be work thrown away)."""
    return bootstrap if partitions == 1 else 0


def reductions_curve(
    run: TrainRun,
    attribute: str,
    partitions: Mapping[int, Mapping[str, Images]],
    bounds: Sequence[float],
    bootstrap: int = 0,
    gap: Gap = GAPS["equalized_odds"],
) -> list[dict[str, Any]]:
    """ExponentiatedGradient (the `gap`'s constraint, each bound) over a logistic regression
    trained on the target's training split, scored on each repair seed's parts (`partitions`:
    seed -> name -> inputs), the mean over them as the repairs' (`mean_row`)."""
    train = run.splits.images(run.data, "target_train")
    points = []
    for bound in bounds:
        mitigator = ExponentiatedGradient(
            LogisticRegression(max_iter=1000),
            gap.moment(difference_bound=bound),
        )
        mitigator.fit(
            features(train), train.y.numpy(), sensitive_features=train.groups[attribute].numpy()
        )
        scores = [
            {
                name: score(
                    mitigator.predict(features(images), random_state=seed),
                    images,
                    attribute,
                    bootstrap,
                    seed,
                )
                for name, images in parts.items()
            }
            for seed, parts in partitions.items()
        ]
        points.append({"setting": bound, **mean_row(scores)})
    return points


def threshold_point(
    run: TrainRun,
    attribute: str,
    fine_tune: Images,
    parts: Mapping[str, Images],
    seed: int,
    bootstrap: int = 0,
    gap: Gap = GAPS["equalized_odds"],
) -> dict[str, Any]:
    """ThresholdOptimizer (the `gap`'s constraint) on the target's scores, fitted on
    `fine_tune`."""
    optimizer = ThresholdOptimizer(
        estimator=TorchScores(run.model).fit(None, None),
        constraints=gap.constraint,
        predict_method="predict_proba",
        prefit=True,
    )
    optimizer.fit(
        features(fine_tune),
        fine_tune.y.numpy(),
        sensitive_features=fine_tune.groups[attribute].numpy(),
    )
    point: dict[str, Any] = {"setting": gap.constraint}
    for name, images in parts.items():
        pred = optimizer.predict(
            features(images),
            sensitive_features=images.groups[attribute].numpy(),
            random_state=seed,
        )
        point[name] = score(pred, images, attribute, bootstrap, seed)
    return point


def as_point(row: Mapping[str, Any]) -> dict[str, Any]:
    """A repair report row as a point: its test numbers under `test`, validation under `val`."""
    test = {
        k: v
        for k, v in row.items()
        if k in ("n", "clean_acc", "eo_diff", "dp_diff", "by_group", "ci")
    }
    return {
        "setting": row["setting"],
        "test": test,
        "val": row["val"],
        "params_changed_fraction": row.get("params_changed_fraction"),
        "partitions": row.get("partitions", 1),
    }


def choose(
    points: Sequence[Mapping], val_acc: float, tolerance: float, key: str = "eo_diff"
) -> Mapping | None:
    """The point of lowest validation gap (`key`: EO difference by default) within `tolerance`
    of `val_acc` (None if no point is)."""
    fit = [p for p in points if p["val"]["clean_acc"] >= val_acc - tolerance]
    return min(fit, key=lambda p: p["val"][key]) if fit else None


def pareto_front(points: Sequence[Mapping], key: str = "eo_diff") -> np.ndarray:
    """The (test gap, test accuracy) points no other point beats on both, by gap (`key`)."""
    front: list[tuple[float, float]] = []
    for value, acc in sorted((p["test"][key], p["test"]["clean_acc"]) for p in points):
        if not front or acc > front[-1][1]:
            front.append((value, acc))
    return np.array(front)


def frontier_gap(
    points: Sequence[Mapping], others: Sequence[Mapping], key: str = "eo_diff"
) -> dict[str, Any]:
    """Each of `points`' test accuracy minus the Pareto front of `others` (linear between its
    points) at the same test gap (`key`), for the points within the front's range: > 0 where
    `points` trade accuracy for fairness better. A description of the curves (test numbers),
    not a choice."""
    front = pareto_front(others, key)
    gaps = [
        p["test"]["clean_acc"] - float(np.interp(p["test"][key], front[:, 0], front[:, 1]))
        for p in points
        if front[0, 0] <= p["test"][key] <= front[-1, 0]
    ]
    return {
        "mean": float(np.mean(gaps)) if gaps else None,
        "n": len(gaps),
        "of": len(points),
        "lowest": float(min(p["test"][key] for p in points)),
        "others_lowest": float(front[0, 0]),
    }


def plot_tradeoff(
    curves: Mapping[str, Sequence[Mapping]],
    before: Mapping,
    path: Path,
    gap: Gap = GAPS["equalized_odds"],
    tolerance: float = 0.01,
) -> Path:
    """Test accuracy against the test gap of every point of every method; the dashed line is
    the original's accuracy less the study's `tolerance`."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, points in curves.items():
        xs = [p["test"][gap.key] for p in points]
        ys = [p["test"]["clean_acc"] for p in points]
        ax.plot(xs, ys, "o-" if len(points) > 1 else "s", label=name)
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(str(p["setting"]), (x, y), fontsize=6, alpha=0.7)
    ax.plot(before[gap.key], before["clean_acc"], "k*", ms=12, label="original")
    drop = f"-{tolerance * 100:.3g} point" + ("" if tolerance == 0.01 else "s")
    ax.axhline(before["clean_acc"] - tolerance, color="grey", ls="--", lw=0.8, label=drop)
    ax.axvline(
        before[gap.key] / 2, color="grey", ls=":", lw=0.8, label=f"half the {gap.short} diff"
    )
    ax.set(xlabel=f"{gap.label} (test)", ylabel="accuracy (test)")
    ax.set_title("Accuracy-fairness trade-off (labels: penalty weight / constraint bound)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_group_rates(models: Mapping[str, Mapping], path: Path) -> Path:
    """Per model, each group's TPR, FPR and selection rate on the test split."""
    rates = [("tpr", "TPR"), ("fpr", "FPR"), ("selection_rate", "selection rate")]
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), sharey=True)
    names = list(models)
    width = 0.38
    for ax, (key, label) in zip(axes, rates, strict=True):
        for i, group in enumerate(GROUPS):
            values = [models[n]["by_group"][group][key] for n in names]
            ax.bar(np.arange(len(names)) + (i - 0.5) * width, values, width, label=group)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{label} per group (test)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def study(
    directories: Sequence[Path],
    out: Path,
    bounds: Sequence[float],
    tolerance: float,
    gap: Gap = GAPS["equalized_odds"],
) -> dict[str, Any]:
    """Gather the jobs of every sweep directory (of one train run; methods labelled by their
    directory's name when there are several), run fairlearn's mitigations for `gap`, choose
    every method's point on validation by it, write the table and plots into `out`; returns
    the study."""
    sweeps = {d: gather(d) for d in directories}
    first = next(iter(sweeps.values()))[0]
    others = {j["train_dir"] for jobs in sweeps.values() for j in jobs} - {first["train_dir"]}
    if others:
        raise ValueError(f"the sweeps repair other train runs than {first['train_dir']}: {others}")
    run = load_train_run(first["train_dir"])
    attribute = first["cfg"].objective.attribute
    # One fine-tuning / validation partition of the repair split per repair seed: every
    # method's validation numbers are the mean over the same partitions.
    seeds = repair_seeds(sweeps)
    val_fraction = first["cfg"].repair.val_fraction
    splits = {s: repair_split_parts(run, val_fraction, s) for s in seeds}
    test = run.splits.images(run.data, "test")
    partitions = {s: {"val": val, "test": test} for s, (_, val) in splits.items()}
    befores = {j["seed"]: j["before"] for jobs in sweeps.values() for j in jobs}
    before = mean_row([befores[s] for s in seeds])
    curves = {
        m: [as_point(r) for r in rows]
        for d, jobs in sweeps.items()
        for m, rows in repair_curves(jobs, d.name if len(sweeps) > 1 else "").items()
    }
    boot = interval_resamples(int(first["cfg"].objective.bootstrap), len(seeds))
    curves["reductions (ExpGrad, logistic)"] = reductions_curve(
        run, attribute, partitions, bounds, boot, gap
    )
    thresholds = [
        threshold_point(run, attribute, fine_tune, partitions[s], s, boot, gap)
        for s, (fine_tune, _) in splits.items()
    ]
    curves["ThresholdOptimizer"] = [{"setting": gap.constraint, **mean_row(thresholds)}]
    chosen = {
        m: choose(points, before["val"]["clean_acc"], tolerance, gap.key)
        for m, points in curves.items()
    }
    against_random = {
        m: frontier_gap(points, curves[m.replace("targeted", "random", 1)], gap.key)
        for m, points in curves.items()
        if m.startswith("targeted") and m.replace("targeted", "random", 1) in curves
    }
    reductions = curves["reductions (ExpGrad, logistic)"]
    against_reductions = {
        m: frontier_gap([p], reductions, gap.key)
        for m, p in chosen.items()
        if p is not None and m.split(",")[0] in REPAIR_ROWS
    }
    result = {
        "directories": [str(d) for d in directories],
        "train_dir": first["train_dir"],
        "attribute": attribute,
        "gap": gap.constraint,
        "tolerance": tolerance,
        "repair_seeds": seeds,
        "before": before,
        "curves": curves,
        "chosen": chosen,
        "against_random": against_random,
        "against_reductions": against_reductions,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2), out / "study.json")
    atomic_write_text(markdown(result) + "\n" + points_markdown(result), out / "study.md")
    plot_tradeoff(curves, before, out / "tradeoff.png", gap, tolerance)
    models = {"original": before} | {
        m: p["test"] for m, p in chosen.items() if p and "by_group" in p["test"]
    }
    plot_group_rates(models, out / "group_rates.png")
    return result


def cell(numbers: Mapping[str, Any], key: str, fmt: str) -> str:
    """A number with its bootstrap interval, when it has one."""
    text = format(numbers[key], fmt)
    if key in numbers.get("ci", {}):
        text += " [" + ", ".join(format(v, fmt) for v in numbers["ci"][key]) + "]"
    return text


def markdown(result: Mapping[str, Any]) -> str:
    """The chosen point of every method, test numbers (bootstrap intervals in brackets)."""
    before, gap = result["before"], GAPS[result.get("gap", "equalized_odds")]
    seeds = result.get("repair_seeds", [])
    over = f", the mean over repair seeds {seeds}' partitions" if len(seeds) > 1 else ""
    lines = [
        f"# Fairness study ({result['attribute']})",
        "",
        f"Test split, n = {before['n']}. Each method's point chosen on the repair split's "
        f"validation part (n = {before['val']['n']}{over}; lowest {gap.short} diff with accuracy "
        f"within {result['tolerance']:.0%} of the original's). Setting: penalty weight (and anchor "
        "weight, if any; repairs) or constraint bound (reductions).",
        "",
        "| model | setting | accuracy | EO diff | DP diff | params changed | val accuracy "
        f"| val {gap.short} diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = {"original": {"setting": "-", "test": before, "val": before["val"]}}
    for name, p in {**rows, **result["chosen"]}.items():
        if p is None:
            lines.append(f"| {name} | none within tolerance | | | | | | |")
            continue
        t, v = p["test"], p["val"]
        changed = p.get("params_changed_fraction")
        lines.append(
            f"| {name} | {p['setting']} | {cell(t, 'clean_acc', '.2%')} | "
            f"{cell(t, 'eo_diff', '.3f')} | {cell(t, 'dp_diff', '.3f')} | "
            f"{'-' if changed is None else f'{changed:.1%}'} | {v['clean_acc']:.2%} | "
            f"{v[gap.key]:.3f} |"
        )
    if result.get("against_random"):
        lines += table_section(
            "Targeted against random plans (mean of draws) on test, every point of a sweep: "
            f"targeted accuracy minus the random points' Pareto front at equal {gap.short} "
            f"difference (mean over the targeted points within the front's range), and each "
            f"curve's lowest {gap.short} difference.",
            [
                "sweep",
                "accuracy vs random front",
                "points compared",
                f"lowest {gap.short} targeted / random",
            ],
            [
                [
                    name,
                    "-" if g["mean"] is None else f"{100 * g['mean']:+.2f} points",
                    f"{g['n']} of {g['of']}",
                    f"{g['lowest']:.3f} / {g['others_lowest']:.3f}",
                ]
                for name, g in result["against_random"].items()
            ],
        )
    if result.get("against_reductions"):
        lines += table_section(
            "Each chosen repair against fairlearn's reductions on test: its accuracy minus the "
            f"Pareto front of ExpGrad's points at the same {gap.short} difference (outside: its "
            f"{gap.short} difference is outside the range of ExpGrad's front).",
            ["model", "accuracy vs reductions front"],
            [
                [name, "outside" if g["mean"] is None else f"{100 * g['mean']:+.2f} points"]
                for name, g in result["against_reductions"].items()
            ],
        )
    return "\n".join(lines) + "\n"


def table_section(intro: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A paragraph and its markdown table, as lines to append to a report."""
    return [
        "",
        intro,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def points_markdown(result: Mapping[str, Any]) -> str:
    """Every point of every curve: test numbers (with each group's TPR, which shows whether a
    gap closed by raising one group's rate or lowering both) and validation numbers (of the
    study's gap)."""
    gap = GAPS[result.get("gap", "equalized_odds")]
    lines = [
        "## Every point",
        "",
        "| method | setting | accuracy | EO diff | DP diff | TPR (priv / unpriv) | val accuracy "
        f"| val {gap.short} diff | params changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, points in result["curves"].items():
        for p in points:
            t, v = p["test"], p["val"]
            groups = t.get("by_group", {})
            tpr = " / ".join(f"{groups[g]['tpr']:.1%}" for g in GROUPS) if groups else "-"
            changed = p.get("params_changed_fraction")
            lines.append(
                f"| {name} | {p['setting']} | {t['clean_acc']:.2%} | {t['eo_diff']:.3f} | "
                f"{t['dp_diff']:.3f} | {tpr} | {v['clean_acc']:.2%} | {v[gap.key]:.3f} | "
                f"{'-' if changed is None else f'{changed:.1%}'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "directories", type=Path, nargs="+", help="multirun directories of repair.py jobs"
    )
    parser.add_argument("--out", type=Path, help="where to write (default: the first directory)")
    parser.add_argument("--bounds", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.04, 0.08])
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument(
        "--gap", choices=list(GAPS), default="equalized_odds", help="what the study chooses by"
    )
    args = parser.parse_args(argv)
    out = args.out or args.directories[0]
    result = study(args.directories, out, args.bounds, args.tolerance, GAPS[args.gap])
    print(markdown(result))


if __name__ == "__main__":
    main()
