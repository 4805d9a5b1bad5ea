"""Settings checked at the door, before any expensive work: a bad value stops the job with one
line naming the key, the value and what is allowed (instead of a silent no-op or a late, bare
error deep inside a stage)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

Rule = tuple[str, Callable[[Any], bool], str]


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _fraction(v: Any) -> bool:
    return isinstance(v, int | float) and 0 < v <= 1


TRAIN: Sequence[Rule] = (
    ("dataset.eps", _fraction, "in (0, 1]: inputs are in [0, 1]"),
    ("dataset.eps_step", lambda v: isinstance(v, int | float) and v > 0, "> 0"),
    ("ipg.shard_size", _positive_int, "an integer >= 1"),
    ("ipg.calibration_size", _positive_int, "an integer >= 1"),
    ("ipg.capture.k", _positive_int, "an integer >= 1"),
    ("ipg.capture.chunk_size", _positive_int, "an integer >= 1"),
    ("target.train.epochs", _positive_int, "an integer >= 1"),
    ("target.train.batch_size", _positive_int, "an integer >= 1"),
    ("gnn.train.batch_size", _positive_int, "an integer >= 1"),
    ("gnn.train.max_epochs", _positive_int, "an integer >= 1"),
    ("detector.adaptive_study.max_inputs", _positive_int, "an integer >= 1"),
    ("detector.adaptive_study.fpr", lambda v: isinstance(v, float) and 0 < v < 1, "in (0, 1)"),
)
REPAIR: Sequence[Rule] = (
    ("repair.level", lambda v: v in ("node", "edge"), "node or edge"),
    ("repair.fraction", _fraction, "in (0, 1]: the share of each layer's parameters"),
    ("repair.k", lambda v: v is None or _positive_int(v), "null or an integer >= 1"),
    ("repair.val_fraction", lambda v: isinstance(v, float) and 0 < v < 1, "in (0, 1)"),
    ("repair.finetune.epochs", _positive_int, "an integer >= 1"),
    ("repair.finetune.batch_size", _positive_int, "an integer >= 1"),
    ("repair.finetune.lr", lambda v: isinstance(v, int | float) and v > 0, "> 0"),
    ("repair.finetune.tolerance", lambda v: isinstance(v, int | float) and v >= 0, ">= 0"),
    ("repair.finetune.check_every", _positive_int, "an integer >= 1"),
    ("eval_batch_size", _positive_int, "an integer >= 1"),
)


class ConfigError(ValueError):
    """A setting is out of its range; the message names the key."""


_ABSENT = object()


def check_settings(cfg: DictConfig, rules: Sequence[Rule]) -> None:
    """Refuse the first setting of `rules` that breaks its rule (keys a config does not have
    are skipped: a config group may not define them)."""
    for key, ok, allowed in rules:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not ok(value):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}")
