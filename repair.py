"""Hydra entry point: `python repair.py [train_dir=<train.py run dir>] [overrides]`
(see conf/repair.yaml)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from ipg_gnn.errors import one_line_errors
from ipg_gnn.jobs.repair import run_repair


@hydra.main(version_base="1.3", config_path="conf", config_name="repair")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        run_repair(cfg)
    print((Path(cfg.paths.output_dir) / "repair_report.md").read_text())
    print(cfg.paths.output_dir)


if __name__ == "__main__":
    main()
