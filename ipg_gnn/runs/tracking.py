"""What a run reports while and after it works: loggers (W&B, CSV) and wall time per stage."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig


def make_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate every logger of the `logger` group (none for `logger=none`)."""
    return [instantiate(c) for c in (cfg.get("logger") or {}).values()]


def close_loggers(loggers: list[Logger]) -> None:
    """Flush the loggers; an offline W&B run is closed so its files are complete on disk."""
    for lg in loggers:
        lg.finalize("success")
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()


def publish(loggers: list[Logger], metrics: Mapping[str, float], plots: list[Path] = ()) -> None:
    """Send a run's final numbers (and, to W&B, its plots) to every logger, then close them."""
    for lg in loggers:
        lg.log_metrics(dict(metrics))
        if isinstance(lg, WandbLogger):
            for plot in plots:  # one key each: W&B shows images of one key at one size
                lg.log_image(f"plots/{plot.stem}", [str(plot)])
    close_loggers(loggers)


class StageClock:
    """Wall time per named stage (`with clock("name"): ...`), for the reports."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 2)
