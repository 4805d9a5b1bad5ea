"""Hydra entry point: `python train.py [overrides]` (see conf/train.yaml)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from ipg_gnn.errors import one_line_errors
from ipg_gnn.jobs.train import run_train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        report = run_train(cfg)
    target = report["attack"]["target"]
    print(f"target: {target['origin']} ({target['checkpoint']})")
    print(report["objective"].format_population_report(report["attack"]))
    print()
    print((Path(cfg.paths.output_dir) / "detector_report.md").read_text())
    print(cfg.paths.output_dir)


if __name__ == "__main__":
    main()
