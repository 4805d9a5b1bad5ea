"""Check a repair report's robust accuracy against an independent attack.

`python -m ipg_gnn.tools.reference_check <repair run dir>` loads the original target, the targeted
repair (`repaired.pt`) and every baseline's model (`models/<name>.pt`), attacks each on the same
test inputs with :class:`ipg_gnn.attacks.ReferencePGD` (plain torch, no ART: CE and margin
losses, restarts, many steps) and prints, beside the report's robust accuracy, the reference's and
the gap. The report's number is trustworthy when the reference finds at most about 1 point less
(`robust_eval=standard`; see docs/robust_eval.md). Writes `reference_check.json` in that
directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from torch import nn

from ipg_gnn.attacks import ReferencePGD
from ipg_gnn.repair.report import model_result
from ipg_gnn.runs.checkpoints import load_checkpoint
from ipg_gnn.runs.io import atomic_write_text
from ipg_gnn.runs.train_run import load_train_run, target_arch
from ipg_gnn.targets import predict


def _models(directory: Path) -> tuple[dict[str, nn.Module], dict[str, Any], Any]:
    """The models a repair run evaluated, by report name, its report and its train run."""
    report = json.loads((directory / "repair_report.json").read_text())
    run = load_train_run(report["train_dir"])
    arch = target_arch(run.cfg, run.data)
    models = {"before": run.model, "after": load_checkpoint(directory / "repaired.pt", arch)}
    for path in sorted((directory / "models").glob("*.pt")):
        models[path.stem] = load_checkpoint(path, arch)
    return models, report, run


def reference_check(
    directory: str | Path, steps: int = 200, restarts: int = 5, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Reference-PGD robust accuracy of every model of the repair run in `directory`, beside the
    report's, on the report's test inputs at the train run's eps."""
    directory = Path(directory)
    models, report, run = _models(directory)
    test = run.splits.images(run.data, "test")
    attack = ReferencePGD(
        float(run.cfg.dataset.eps), float(run.cfg.dataset.eps_step), steps, restarts, seed=seed
    )
    rows = {}
    for name, model in models.items():
        result = attack(model.eval(), test.x, test.y)
        robust = float(((predict(model, test.x) == test.y) & ~result.success).float().mean())
        reported = float(model_result(report, name)["robust_acc"])
        rows[name] = {"reported": reported, "reference": robust, "gap": reported - robust}
    out = {
        "attack": repr(attack),
        "n": len(test),
        "models": rows,
    }
    atomic_write_text(json.dumps(out, indent=2), directory / "reference_check.json")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="a repair.py run directory")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    rows = reference_check(args.directory, args.steps, args.restarts)
    print("| model | report robust | reference PGD robust | report - reference |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['reported']:.2%} | {r['reference']:.2%} | {r['gap']:+.2%} |")


if __name__ == "__main__":
    main()
