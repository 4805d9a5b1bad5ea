"""Hydra entry point: `python train.py [overrides]` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from ipg_gnn.pipeline import format_attack_table, run_train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    report = run_train(cfg)
    print(f"target: {report['target']['origin']} ({report['target']['checkpoint']})")
    print(format_attack_table(report))
    print(cfg.paths.output_dir)


if __name__ == "__main__":
    main()
