"""Hydra entry point: `python plan_quality.py [train_dir=<train.py run dir>] [overrides]`
(see conf/plan_quality.yaml); with `study.units.metric=<number>`, the study of single units."""

import hydra
from omegaconf import DictConfig

from ipg_gnn.errors import one_line_errors
from ipg_gnn.jobs.plan_quality import run_plan_quality, run_unit_quality


@hydra.main(version_base="1.3", config_path="conf", config_name="plan_quality")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        if cfg.study.units.metric:
            run_unit_quality(cfg)
        else:
            run_plan_quality(cfg)
    print(cfg.paths.output_dir)


if __name__ == "__main__":
    main()
