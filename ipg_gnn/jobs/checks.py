"""Settings checked at the door, before any expensive work: a bad value stops the job with one
line naming the key, the value and what is allowed (instead of a silent no-op or a late, bare
error deep inside a stage).

The schema is typed: a dataclass per config section mirrors the keys a job relies on, each field's
type says what it holds (`PositiveInt`, `Fraction`, a `Literal` of names, `Optional`), and
`check_settings` walks it against the composed config. Keys a config does not have are skipped
(a config group may not define them); keys the schema does not name are left to their stages.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf

from ipg_gnn.errors import ConfigError

__all__ = ["ConfigError", "RepairSettings", "TrainSettings", "check_settings"]


@dataclass(frozen=True)
class Bound:
    """The range a number must lie in (`high=None`: unbounded above)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def holds(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{self.low:g}, {self.high:g}{right}"
        return text + (f": {self.why}" if self.why else "")


PositiveInt = Annotated[int, Bound(1)]
Positive = Annotated[float, Bound(0, low_open=True)]
Fraction = Annotated[float, Bound(0, 1, low_open=True)]


@dataclass
class DatasetSettings:
    eps: Annotated[float, Bound(0, 1, low_open=True, why="inputs are in [0, 1]")]
    eps_step: Positive


@dataclass
class CaptureSettings:
    k: PositiveInt
    chunk_size: PositiveInt


@dataclass
class IPGSettings:
    shard_size: PositiveInt
    calibration_size: PositiveInt
    capture: CaptureSettings


@dataclass
class Training:
    epochs: PositiveInt
    batch_size: PositiveInt


@dataclass
class TargetSettings:
    train: Training


@dataclass
class GNNTraining:
    batch_size: PositiveInt
    max_epochs: PositiveInt


@dataclass
class GNNSettings:
    train: GNNTraining


@dataclass
class AdaptiveStudySettings:
    max_inputs: PositiveInt
    fpr: Annotated[float, Bound(0, 1, low_open=True, high_open=True)]


@dataclass
class DetectorSettings:
    adaptive_study: AdaptiveStudySettings


@dataclass
class TrainSettings:
    """What `train.py` checks."""

    dataset: DatasetSettings
    ipg: IPGSettings
    target: TargetSettings
    gnn: GNNSettings
    detector: DetectorSettings


@dataclass
class FinetuneSettings:
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: Positive
    tolerance: Annotated[float, Bound(0)]
    check_every: PositiveInt
    rollback: bool
    tolerance_start: Annotated[float, Bound(0)] | None
    anneal_fraction: Fraction


@dataclass
class RepairPlanSettings:
    level: Literal["node", "edge"]
    fraction: Annotated[float, Bound(0, 1, low_open=True, why="the share of each layer's params")]
    k: PositiveInt | list[PositiveInt] | None
    val_fraction: Annotated[float, Bound(0, 1, low_open=True, high_open=True)]
    finetune: FinetuneSettings


@dataclass
class RepairSettings:
    """What `repair.py` checks."""

    repair: RepairPlanSettings
    eval_batch_size: PositiveInt
    device: Literal["auto", "cpu", "cuda"]


_ABSENT = object()


def check_settings(cfg: DictConfig, schema: type) -> None:
    """Refuse the first setting of `cfg` that breaks `schema` (a dataclass), naming its key."""
    _check_section(cfg, schema, "")


def _check_section(cfg: DictConfig, schema: type, prefix: str) -> None:
    hints = typing.get_type_hints(schema, include_extras=True)
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        kind = hints[f.name]
        if is_dataclass(kind):
            _check_section(cfg, kind, f"{key}.")
        elif (allowed := _violation(value, kind)) is not None:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}")


def _violation(value: Any, kind: Any) -> str | None:
    """What `value` must be, if it is not a `kind`; None if it is."""
    origin = typing.get_origin(kind)
    if origin is Annotated:
        base, *extras = typing.get_args(kind)
        if (wrong := _violation(value, base)) is not None:
            return wrong
        bound = next(e for e in extras if isinstance(e, Bound))
        return None if bound.holds(value) else f"{_name(base)} {bound.describe()}"
    if origin is Literal:
        names = typing.get_args(kind)
        return None if value in names else " or ".join(map(str, names))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        wrongs = [_violation(value, o) for o in options if o is not type(None)]
        if any(w is None for w in wrongs):
            return None
        return ("null or " if type(None) in options else "") + " or ".join(map(str, wrongs))
    if origin is list:
        (item,) = typing.get_args(kind)
        if not OmegaConf.is_list(value) and not isinstance(value, list):
            return "a list"
        wrongs = [w for v in value if (w := _violation(v, item)) is not None]
        return f"a list whose items are each {wrongs[0]}" if wrongs else None
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return None if number and isinstance(value, int) else "an integer"
    if kind is float:
        return None if number else "a number"
    raise TypeError(f"the settings schema has a type it cannot check: {kind!r}")


def _name(kind: type) -> str:
    return {int: "an integer", float: "a number"}[kind]
