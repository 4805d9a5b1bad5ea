"""The membership audit of a `train.py` run made with `objective=membership`.

`python -m ipg_gnn.tools.membership_audit <train run dir> [--shadows N] [--out DIR]` scores the
same member / non-member inputs of the run's IPG splits with every attack:

- `GNN`: the run's detector over the inputs' IPGs (the white-box attack);
- `flat`: a logistic regression on the IPGs' unit activations (`FlatActivations`), fitted on
  the audit's train part (`ipg_train`);
- `loss` (Yeom et al. 2018), `confidence`, `entropy`: scores of the target's output alone;
- `lira`: LiRA offline (Carlini et al. 2022): `--shadows` models trained like the target on
  random subsets (of `target_train`'s size) of the split `objective.lira.split`, which holds no
  audited input; the score is how far the target's logit-scaled confidence lies above the
  shadows' (OUT) Gaussian of each input; `lira_fixed_variance` uses one spread for all inputs
  (the paper's choice below 64 shadows).

Each attack's direction (a higher score means member, or the reverse when its validation AUC
is below 0.5) and threshold (for balanced accuracy) are fitted on the audit's validation part
(`ipg_val`); every number is of the test part but `val_auc`, each attack's AUC on `ipg_val`
(where a privacy repair's settings are chosen). Writes `membership_audit.{json,md}` and the
ROC on log-log axes, `membership_roc.png`, into `--out` (default: the run directory).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from omegaconf import OmegaConf, open_dict
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from ipg_gnn.data import Images
from ipg_gnn.detect import Activations, FlatActivations, score_graphs
from ipg_gnn.detect.metrics import LOW_FPRS, attack_metrics, fit_threshold, orientation
from ipg_gnn.errors import ConfigError, one_line_errors
from ipg_gnn.graphs import IPGDataset
from ipg_gnn.jobs.stages import (
    fit_cached,
    ipg_dataset,
    make_objective,
    split_inputs,
    train_gnn_detector,
)
from ipg_gnn.objectives.membership import (
    FIT,
    SELECT,
    TEST,
    Membership,
    attack_scores,
    generalisation,
    lira_offline,
    logit_confidence,
    logits_of,
)
from ipg_gnn.repair.report import mean_results, model_result
from ipg_gnn.runs.io import atomic_write_text
from ipg_gnn.runs.run_dir import read_record
from ipg_gnn.runs.tracking import StageClock
from ipg_gnn.runs.train_run import TRAIN_CONFIG, TrainRun, load_train_run, target_arch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: The attacks over IPGs that the issue measures against the strongest of the others.
GNN_ATTACKS = ("GNN", "GNN_calibrated")


def audited(
    run: TrainRun, objective: Membership, split: str, dataset: IPGDataset
) -> tuple[Images, torch.Tensor]:
    """The audited inputs of `split` in its IPG `dataset`'s order (non-members, then members)
    and whether each is a member, checked to be the inputs of those IPGs: every attack scores
    the inputs the GNN scores."""
    inputs = split_inputs(run.data, run.splits)
    parts = [
        objective.reference_population().select(split, inputs),
        objective.contrasts()["member"].select(split, inputs),
    ]
    is_member = torch.cat([torch.full((len(p.images),), i) for i, p in enumerate(parts)])
    source = np.concatenate([p.source_index for p in parts])
    meta = dataset.meta
    if not (
        torch.equal(meta["is_contrast"].long(), is_member)
        and np.array_equal(meta["source_index"].numpy(), source)
    ):
        raise ConfigError(
            f"the run's {split} IPGs are not the objective's member / non-member inputs: audit "
            "with the objective settings of the train run"
        )
    x = torch.cat([p.images.x for p in parts])
    return Images(x, torch.cat([p.images.y for p in parts])), is_member


def train_shadows(
    run: TrainRun, objective: Membership, count: int, clock: StageClock
) -> list[nn.Module]:
    """`count` models trained like the target, each on a seeded random subset of
    `objective.lira.split` as large as the target's training split; cached under
    `paths.cache_dir/shadows` (keyed by what shapes their weights), so the audits of a
    target's repaired versions share them."""
    pool_split = objective.lira["split"]
    pool = run.splits.images(run.data, pool_split)
    size = len(run.splits.indices["target_train"])
    if len(pool) < size:
        raise ConfigError(
            f"objective.lira.split={pool_split!r} holds {len(pool)} inputs, fewer than the "
            f"target's {size} training inputs each shadow model needs: enlarge that split "
            "or cap target_train (split.max_size.target_train)"
        )
    shadows = []
    arch = target_arch(run.cfg, run.data)
    for i in range(count):
        rng = np.random.default_rng([run.cfg.seed, i])
        subset = pool.subset(np.sort(rng.permutation(len(pool))[:size]))
        with clock("shadows"):
            shadows.append(fit_cached(run.cfg, arch, subset, run.cfg.seed + 1 + i, "shadows"))
    return shadows


def calibrated_attacks(
    run: TrainRun,
    ipgs: Mapping[str, Any],
    inputs: Mapping[str, Images],
    shadows: Sequence[nn.Module],
    directory: Path,
) -> tuple[dict[str, Callable[[str], torch.Tensor]], dict[str, Any]]:
    """The GNN and the flat baseline refitted on IPGs whose label features are calibrated by
    the shadow models (`IPGDataset(reference_logits=...)`: what models that never saw an input
    make of it), the GNN configured as the run's and selected on `SELECT`; each as a scorer of
    a part. Returns them and the GNN's training record."""
    data = {
        split: ipg_dataset(
            ipgs, split, ["member"], torch.stack([logits_of(m, x.x) for m in shadows])
        )
        for split, x in inputs.items()
    }
    features = data[FIT].tensors["x"].shape[2]
    gnn, info = train_gnn_detector(run.cfg, data[FIT], data[SELECT], directory, None, features)
    flat = FlatActivations().fit(Activations.of(data[FIT]))
    scorers = {
        "GNN_calibrated": lambda split: score_graphs(gnn, data[split]).double(),
        "flat_calibrated": lambda split: flat.score(Activations.of(data[split])),
    }
    return scorers, {"best_val_auroc": info["best_val_auroc"], "epochs": info["epochs"]}


def score_all(
    run: TrainRun, objective: Membership, shadows: int, clock: StageClock, out: Path
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor], dict[str, Any]]:
    """Every attack's scores on the selection and test parts, the parts' membership, and the
    calibrated GNN's training record (empty without `objective.lira.calibrated_gnn`)."""
    ipgs = json.loads((run.directory / "ipg_datasets.json").read_text())
    datasets = {s: ipg_dataset(ipgs, s, ["member"]) for s in (FIT, SELECT, TEST)}
    inputs, labels = {}, {}
    for split, dataset in datasets.items():
        inputs[split], labels[split] = audited(run, objective, split, dataset)
    detector = run.detector(datasets[TEST].topology.num_nodes)
    flat = FlatActivations().fit(Activations.of(datasets[FIT]))
    models = train_shadows(run, objective, shadows, clock)
    calibrated: dict[str, Callable[[str], torch.Tensor]] = {}
    info: dict[str, Any] = {}
    if objective.lira.get("calibrated_gnn", False):
        with clock("calibrated_gnn"):
            calibrated, info = calibrated_attacks(run, ipgs, inputs, models, out / "calibrated_gnn")
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for split in (SELECT, TEST):
        images = inputs[split]
        logits = logits_of(run.model, images.x)
        with clock("score"):
            shadow = torch.stack(
                [logit_confidence(logits_of(m, images.x), images.y) for m in models]
            )
            scores[split] = {
                "GNN": score_graphs(detector, datasets[split]).double(),
                "flat": flat.score(Activations.of(datasets[split])),
                **{name: scorer(split) for name, scorer in calibrated.items()},
                **attack_scores(logits, images.y),
                **{
                    name: lira_offline(logit_confidence(logits, images.y), shadow, fixed)
                    for name, fixed in (("lira", False), ("lira_fixed_variance", True))
                },
            }
    return scores, {s: labels[s] for s in (SELECT, TEST)}, info


def plot_roc(scores: Mapping[str, np.ndarray], is_member: torch.Tensor, path: Path) -> Path:
    """Every attack's test ROC on log-log axes, where low-FPR differences show (`scores`
    oriented as the attack uses them: higher means member)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    floor = 1 / max(int((is_member == 0).sum()), 1)
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(is_member.numpy(), s)
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=name)
    ax.plot([floor, 1], [floor, 1], color="grey", lw=0.5, ls="--", label="chance")
    ax.set(xscale="log", yscale="log", xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title("Membership attacks, test part (log-log ROC)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# Every attack's test-part scores (oriented: higher = member) and the membership they score.
SCORES = "membership_scores.npz"


def audit(directory: Path, out: Path, shadows: int | None = None) -> dict[str, Any]:
    """Run every attack on the train run in `directory`; write the report and the test scores
    (`SCORES`) into `out`."""
    run = load_train_run(directory)
    objective = make_objective(run.cfg)
    if not isinstance(objective, Membership):
        raise ConfigError(f"{directory} was not made with objective=membership")
    shadows = int(shadows or objective.lira["shadows"])
    clock = StageClock()
    scores, labels, calibrated = score_all(run, objective, shadows, clock, out)
    attacks, oriented = {}, {}
    for name, s in scores[TEST].items():
        sign = orientation(scores[SELECT][name], labels[SELECT])
        threshold = fit_threshold(sign * scores[SELECT][name], labels[SELECT])
        oriented[name] = (sign * s).numpy()
        attacks[name] = {
            **attack_metrics(sign * s, labels[TEST], threshold),
            "orientation": sign,
            "val_auc": float(roc_auc_score(labels[SELECT], sign * scores[SELECT][name])),
        }
    baselines = {k: v for k, v in attacks.items() if k not in GNN_ATTACKS}
    strongest = max(baselines, key=lambda k: baselines[k]["tpr_at_0.01fpr"])
    best = baselines[strongest]["tpr_at_0.01fpr"]
    test = run.splits.images(run.data, TEST)
    report = {
        "train_dir": str(directory),
        "shadows": shadows,
        "generalisation": generalisation(
            run.model,
            {"member": run.splits.images(run.data, "target_train"), "nonmember": test},
        ),
        "attacks": attacks,
        "strongest_baseline": strongest,
        "gnn_lead_tpr_at_0.01fpr": attacks["GNN"]["tpr_at_0.01fpr"] - best,
        "leads_tpr_at_0.01fpr": {
            name: attacks[name]["tpr_at_0.01fpr"] - best for name in GNN_ATTACKS if name in attacks
        },
        "label_features": bool(run.cfg.ipg.get("label_features", False)),
        "calibrated_gnn": calibrated,
        "timing_s": clock.seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / SCORES, is_member=labels[TEST].numpy(), **oriented)
    atomic_write_text(json.dumps(report, indent=2), out / "membership_audit.json")
    atomic_write_text(markdown(report), out / "membership_audit.md")
    plot_roc(oriented, labels[TEST], out / "membership_roc.png")
    return report


def markdown(report: Mapping[str, Any]) -> str:
    """The audit as a markdown table, with the target's generalisation gap."""
    g = report["generalisation"]
    first = next(iter(report["attacks"].values()))
    rates = " | ".join(f"TPR@{f:.1%}FPR" for f in LOW_FPRS)
    lines = [
        "# Membership audit",
        "",
        f"Target: train accuracy {g['member']['accuracy']:.2%} (loss {g['member']['loss']:.3f}, "
        f"{g['member']['n']} inputs), held-out {g['nonmember']['accuracy']:.2%} "
        f"(loss {g['nonmember']['loss']:.3f}, {g['nonmember']['n']} inputs).",
        f"Test part: {first['n_members']} members, {first['n_nonmembers']} non-members "
        f"(TPR@0.1%FPR allows {first['n_nonmembers'] // 1000} false positive(s) among them"
        f"{'; fewer than 1000 non-members: not meaningful' if first['n_nonmembers'] < 1000 else ''}"
        f"). Thresholds fitted on ipg_val; LiRA with {report['shadows']} shadow models.",
        "",
        f"| attack | AUC | balanced acc. | {rates} |",
        "|---|---|---|" + "---|" * len(LOW_FPRS),
    ]
    for name, m in report["attacks"].items():
        cells = " | ".join(f"{m[f'tpr_at_{f:g}fpr']:.2%}" for f in LOW_FPRS)
        lines.append(f"| {name} | {m['auc']:.4f} | {m['balanced_accuracy']:.2%} | {cells} |")
    leads = report.get("leads_tpr_at_0.01fpr", {"GNN": report["gnn_lead_tpr_at_0.01fpr"]})
    lines.append("")
    lines += [
        f"{name} minus the strongest baseline ({report['strongest_baseline']}) at TPR@1%FPR: "
        f"{lead:+.2%}."
        for name, lead in leads.items()
    ]
    if report.get("label_features"):
        lines.append("The GNN and flat rows see the true label (ipg.label_features).")
    if report.get("calibrated_gnn"):
        c = report["calibrated_gnn"]
        lines.append(
            "GNN_calibrated / flat_calibrated: refitted on IPGs whose label features are "
            f"calibrated by the {report['shadows']} shadow models (GNN best validation AUROC "
            f"{c['best_val_auroc']:.4f}, {c['epochs']} epochs)."
        )
    return "\n".join(lines) + "\n"


def refit_run(train_dir: Path, checkpoint: Path, out: Path) -> Path:
    """A train run in `out` of the model in `checkpoint` (a repaired version of the target of
    the run in `train_dir`) under that run's settings: its IPGs are captured and its GNN
    detector trained anew, so the attack is re-fitted to the model it attacks. A finished
    one is reused (an interrupted one resumes)."""
    from ipg_gnn.jobs.train import run_train  # train.py's job: imported only when re-fitting

    if not ((out / "run.json").is_file() and read_record(out).complete):
        cfg = OmegaConf.load(train_dir / TRAIN_CONFIG)
        with open_dict(cfg):
            cfg.target.checkpoint = str(checkpoint)
            cfg.paths.output_dir = str(out)
        run_train(cfg)
    return out


def written_audit(directory: Path, out: Path, shadows: int | None) -> dict[str, Any] | None:
    """The audit of the train run in `directory` already written in `out` with the same number
    of shadow models (`None`: the run's `objective.lira.shadows`), if there is one."""
    report_path = out / "membership_audit.json"
    if not (report_path.is_file() and (out / SCORES).is_file()):
        return None
    report = json.loads(report_path.read_text())
    wanted = shadows or OmegaConf.load(directory / TRAIN_CONFIG).objective.lira.shadows
    same = report["train_dir"] == str(directory) and report["shadows"] == wanted
    return report if same else None


def audit_repair(repair_dir: Path, shadows: int | None = None) -> dict[str, Any]:
    """Audit the target of a privacy repair run and every model it saved (`repaired.pt`: the
    targeted repair; `models/<baseline>.pt`, each draw of a random plan), each with every
    attack re-fitted to it (`refit_run`), a method of several draws also as their mean
    (`draw_means`); LiRA's shadow models are those of the original audit. Writes each audit
    under `<repair_dir>/audit/<model>/` and the comparison, `privacy_audit.{json,md}` and
    `privacy_tradeoff.png`, into `repair_dir`. An audit already written is reused (the
    original's in the train run itself, where `python -m ipg_gnn.tools.membership_audit
    <train run>` puts it): an interrupted comparison resumes."""
    repair = json.loads((repair_dir / "repair_report.json").read_text())
    train_dir = Path(repair["train_dir"])
    root = repair_dir / "audit"
    runs = {"original": train_dir}
    checkpoints = {
        "targeted": repair_dir / "repaired.pt",
        **{p.stem: p for p in sorted((repair_dir / "models").glob("*.pt"))},
    }
    runs.update({name: refit_run(train_dir, p, root / name) for name, p in checkpoints.items()})
    outs = dict(runs)  # a re-fitted run holds its own audit
    audits = {"original": written_audit(train_dir, train_dir, shadows)}
    if audits["original"] is None:
        outs["original"] = root / "original"
    for name, out in outs.items():
        audits[name] = audits.get(name) or written_audit(runs[name], out, shadows)
        audits[name] = audits[name] or audit(runs[name], out, shadows)
    rows = {
        name: audit_row(a, model_result(repair, REPORT_NAME.get(name, name)))
        for name, a in audits.items()
    }
    rows.update(draw_means(rows))
    scores = {name: dict(np.load(outs[name] / SCORES)) for name in audits}
    report = {
        "repair_dir": str(repair_dir),
        "train_dir": str(train_dir),
        "models": rows,
        "targeted_lead": {
            method: strongest_auc_gap(scores, "targeted", names)
            for method, names in draw_groups(list(audits)).items()
        },
        "targeted_lead_chosen_on_val": {
            method: strongest_auc_gap(
                scores, "targeted", names, {m: rows[m]["chosen_on_val"] for m in audits}
            )
            for method, names in draw_groups(list(audits)).items()
        },
    }
    atomic_write_text(json.dumps(report, indent=2), repair_dir / "privacy_audit.json")
    atomic_write_text(privacy_markdown(report), repair_dir / "privacy_audit.md")
    plot_tradeoff(rows, repair_dir / "privacy_tradeoff.png")
    return report


# The models of a repair run under the names its report gives them.
REPORT_NAME = {"original": "before", "targeted": "after"}


def audit_row(audited: Mapping[str, Any], repair_result: Mapping[str, Any]) -> dict[str, Any]:
    """One model's line of the privacy comparison: accuracy, budget, every re-fitted attack,
    and the strongest attack's AUC on the validation part (`ipg_val`: where repair settings
    are chosen; the GNNs' epochs are selected there too, so theirs reads a little high).
    `strongest` is the attack of highest test AUC, a maximum over noisy test numbers that reads
    high; `chosen_on_val` is the attack of highest validation AUC, and its test AUC is free of
    that selection."""
    attacks = audited["attacks"]
    strongest = max(attacks, key=lambda k: attacks[k]["auc"])
    chosen = max(attacks, key=lambda k: attacks[k]["val_auc"])
    return {
        "chosen_on_val": chosen,
        "chosen_on_val_auc": attacks[chosen]["auc"],
        "strongest_val_auc": max(a["val_auc"] for a in attacks.values()),
        "test_accuracy": audited["generalisation"]["nonmember"]["accuracy"],
        "train_accuracy": audited["generalisation"]["member"]["accuracy"],
        "params_changed_fraction": repair_result.get("params_changed_fraction", 0.0),
        "attacks": attacks,
        "strongest": strongest,
        "strongest_auc": attacks[strongest]["auc"],
    }


def draw_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """The models of each method of several draws (`<method>_<d>`), by method."""
    groups: dict[str, list[str]] = {}
    for name in names:
        method, _, draw = name.rpartition("_")
        if method and draw.isdigit():
            groups.setdefault(method, []).append(name)
    return {method: group for method, group in groups.items() if len(group) > 1}


def draw_means(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A row per method of several draws: the mean of its draws' rows, each draw's strongest
    attack's AUC averaged, so a random plan is judged by its mean."""
    return {
        f"{method} (mean of {len(names)})": {
            **mean_results([rows[n] for n in names]),
            "strongest": "each draw's",
        }
        for method, names in draw_groups(list(rows)).items()
    }


def rank_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """ROC AUC from average ranks (the Mann-Whitney statistic; ties count half): sklearn's
    value, fast enough for a bootstrap."""
    ranks = rankdata(scores)
    n1 = int(is_member.sum())
    n0 = len(is_member) - n1
    return float((ranks[is_member == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def strongest_auc_gap(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    reference: str,
    others: Sequence[str],
    chosen: Mapping[str, str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The mean over the models `others` of each one's strongest attack AUC minus the model
    `reference`'s, with a paired bootstrap over the test part (members and non-members
    resampled separately, the same resample for every model): whether random plans leak more
    than the targeted repair by more than the test part's sampling noise. It does not count
    the repair's or the attacks' own training randomness (seeds do). Without `chosen` each
    model's strongest attack is picked on every resample (a maximum over test numbers, which
    reads high); with it, each model's attack is fixed in advance (`chosen_on_val`: picked on
    the validation part, so the test part only measures it)."""
    is_member = scores[reference]["is_member"]
    for name in others:
        if not np.array_equal(scores[name]["is_member"], is_member):
            raise ValueError(f"the audits of {reference!r} and {name!r} test different inputs")
    attacks = [k for k in scores[reference].keys() if k != "is_member"]

    def gap(index: np.ndarray) -> float:
        y = is_member[index]
        strongest = {
            m: max(rank_auc(scores[m][a][index], y) for a in ([chosen[m]] if chosen else attacks))
            for m in (reference, *others)
        }
        return float(np.mean([strongest[m] for m in others]) - strongest[reference])

    rng = np.random.default_rng(seed)
    members, nonmembers = np.flatnonzero(is_member == 1), np.flatnonzero(is_member == 0)
    resampled = np.array(
        [
            gap(np.concatenate([rng.choice(part, len(part)) for part in (members, nonmembers)]))
            for _ in range(resamples)
        ]
    )
    return {
        "models": list(others),
        "difference": gap(np.arange(len(is_member))),
        "interval_95": [
            float(np.percentile(resampled, 2.5)),
            float(np.percentile(resampled, 97.5)),
        ],
        "fraction_above_zero": float((resampled > 0).mean()),
        "resamples": resamples,
    }


def privacy_markdown(report: Mapping[str, Any]) -> str:
    """The repaired models side by side: accuracy, budget, and every re-fitted attack."""
    rows = report["models"]
    names = list(next(iter(rows.values()))["attacks"])
    lines = [
        "# Privacy repair: every attack re-fitted to each model",
        "",
        "Test part of the audit; AUC / TPR@1%FPR per attack (direction and threshold fitted on "
        "ipg_val); test accuracy on the whole test split. The strongest attack's AUC on ipg_val "
        "is where repair settings are chosen.",
        "",
        "| model | test acc. | train acc. | params changed | strongest AUC | strongest AUC "
        "(ipg_val) | AUC of the attack strongest on ipg_val | " + " | ".join(names) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(names),
    ]
    for model, r in rows.items():
        a = r["attacks"]
        cells = " | ".join(f"{a[n]['auc']:.3f} / {a[n]['tpr_at_0.01fpr']:.2%}" for n in names)
        lines.append(
            f"| {model} | {r['test_accuracy']:.2%} | {r['train_accuracy']:.2%} | "
            f"{r['params_changed_fraction']:.2%} | {r['strongest_auc']:.3f} "
            f"({r['strongest']}) | {r['strongest_val_auc']:.3f} | "
            f"{r['chosen_on_val_auc']:.3f} ({r.get('chosen_on_val', 'each draw')}) | {cells} |"
        )
    leads = [
        (method, g, "strongest AUC (strongest on test)")
        for method, g in report.get("targeted_lead", {}).items()
    ] + [
        (method, g, "AUC of the attack strongest on ipg_val")
        for method, g in report.get("targeted_lead_chosen_on_val", {}).items()
    ]
    for method, g, measure in leads:
        lines += [
            "",
            f"{method}'s {len(g['models'])} plans' mean {measure} minus the targeted "
            f"repair's: {g['difference']:+.4f} (95% paired bootstrap interval over the test "
            f"part [{g['interval_95'][0]:+.4f}, {g['interval_95'][1]:+.4f}]; above zero in "
            f"{g['fraction_above_zero']:.1%} of {g['resamples']} resamples; test sampling "
            "noise only, not the repair's own randomness).",
        ]
    return "\n".join(lines) + "\n"


def plot_tradeoff(rows: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Each model's test accuracy against its strongest re-fitted attack's AUC."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, r in rows.items():
        auc = r["strongest_auc"]
        ax.scatter(auc, r["test_accuracy"] * 100)
        ax.annotate(
            name,
            (auc, r["test_accuracy"] * 100),
            fontsize=8,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.axvline(0.5, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="strongest re-fitted attack's AUC (test part)", ylabel="test accuracy (%)")
    ax.set_title("Privacy repair: leakage vs accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_dir",
        type=Path,
        help="a finished train.py run (objective=membership), or a repair.py run of one: then "
        "its original and every repaired model are audited, attacks re-fitted to each",
    )
    parser.add_argument("--shadows", type=int, help="LiRA's shadow models (objective.lira)")
    parser.add_argument("--out", type=Path, help="where to write a train run's audit")
    args = parser.parse_args(argv)
    with one_line_errors():
        if (args.run_dir / "repair_report.json").is_file():
            print(privacy_markdown(audit_repair(args.run_dir, args.shadows)))
            return
        report = audit(args.run_dir, args.out or args.run_dir, args.shadows)
    print(markdown(report))
    print(f"timing (s): {report['timing_s']}")


if __name__ == "__main__":
    main()
