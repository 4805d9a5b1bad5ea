"""Hydra entry point: `python repair.py [train_dir=<train.py run dir>] [overrides]`
(see conf/repair.yaml)."""

import hydra
from omegaconf import DictConfig

from ipg_gnn.pipeline import format_attack_table, run_repair


@hydra.main(version_base="1.3", config_path="conf", config_name="repair")
def main(cfg: DictConfig) -> None:
    report = run_repair(cfg)
    print(f"target of {report['train_dir']}, attacks re-crafted against it:")
    print(format_attack_table(report["before"]))
    print(cfg.paths.output_dir)


if __name__ == "__main__":
    main()
