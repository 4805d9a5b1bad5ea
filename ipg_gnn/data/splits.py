"""The four disjoint splits of the evaluation rules, fixed by seed and saved with each run.

`target_train` trains the DNN, `ipg_train`/`ipg_val` train and select the detector, `repair`
drives attribution and repair, `test` is for final numbers only. Splits are stratified by class.
Where a dataset has an official test set, `test` is drawn from it and the other splits from the
training pool, in the proportions of their fractions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ipg_gnn.data.sources import ImageDataset, Images

SPLITS = ("target_train", "ipg_train", "ipg_val", "repair", "test")


@dataclass(frozen=True)
class SplitSpec:
    """How to cut a dataset: a fraction per split (summing to 1), a seed, optional size caps."""

    fractions: Mapping[str, float]
    seed: int = 0
    max_size: Mapping[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = set(self.fractions)
        if keys != set(SPLITS):
            raise ValueError(
                f"split fractions must name exactly {', '.join(SPLITS)}; "
                f"got {', '.join(sorted(keys)) or 'nothing'}"
            )
        bad = {k: v for k, v in self.fractions.items() if not 0 < v < 1}
        if bad:
            raise ValueError(f"every split fraction must lie in (0, 1); got {bad}")
        total = sum(self.fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must add up to 1; they add up to {total:.6g} "
                f"({dict(self.fractions)})"
            )
        unknown = set(self.max_size) - set(SPLITS)
        if unknown:
            raise ValueError(f"max_size names unknown splits {sorted(unknown)}; known: {SPLITS}")


def _stratified_cut(
    labels: np.ndarray, names: list[str], fractions: list[float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Partition indices class by class so every part keeps the class proportions."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    bounds = np.cumsum([0.0, *fractions]) / sum(fractions)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(bounds * len(idx)).astype(int)
        for n, lo, hi in zip(names, cuts[:-1], cuts[1:], strict=True):
            parts[n].append(idx[lo:hi])
    return {n: np.sort(np.concatenate(p)) for n, p in parts.items()}


def _cap(
    indices: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Keep a stratified random subset of `size` indices."""
    if size >= len(indices):
        return indices
    keep = _stratified_cut(labels[indices], ["keep", "drop"], [size, len(indices) - size], rng)
    return np.sort(indices[keep["keep"]])


@dataclass(frozen=True)
class Splits:
    """Indices of each split into its pool (`train` or `test` of the dataset)."""

    indices: Mapping[str, np.ndarray]
    pools: Mapping[str, str]
    dataset: str
    spec: SplitSpec

    def images(self, data: ImageDataset, split: str) -> Images:
        """The images of one split."""
        if split not in self.indices:
            raise KeyError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        if data.name != self.dataset:
            raise ValueError(
                f"these splits were made for dataset {self.dataset!r}, not {data.name!r}"
            )
        pool = data.test if self.pools[split] == "test" else data.train
        assert pool is not None
        return pool.subset(self.indices[split])

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.indices.items()}

    def save(self, directory: str | Path) -> Path:
        """Write `splits.npz` (indices) and `splits.json` (pools, spec) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "splits.npz", **{k: np.asarray(v) for k, v in self.indices.items()})
        meta = {
            "dataset": self.dataset,
            "pools": dict(self.pools),
            "sizes": self.sizes(),
            "seed": self.spec.seed,
            "fractions": dict(self.spec.fractions),
            "max_size": dict(self.spec.max_size),
        }
        (directory / "splits.json").write_text(json.dumps(meta, indent=2))
        return directory / "splits.npz"

    @classmethod
    def load(cls, directory: str | Path) -> Splits:
        directory = Path(directory)
        meta = json.loads((directory / "splits.json").read_text())
        with np.load(directory / "splits.npz") as z:
            indices = {k: z[k] for k in SPLITS}
        spec = SplitSpec(meta["fractions"], meta["seed"], meta["max_size"])
        return cls(indices, meta["pools"], meta["dataset"], spec)


def make_splits(data: ImageDataset, spec: SplitSpec) -> Splits:
    """Cut `data` into the five disjoint, stratified splits defined by `spec`."""
    rng = np.random.default_rng(spec.seed)
    train_labels = data.train.y.numpy()
    if data.test is None:
        names = list(SPLITS)
        indices = _stratified_cut(train_labels, names, [spec.fractions[n] for n in names], rng)
        pools = dict.fromkeys(SPLITS, "train")
    else:
        names = [n for n in SPLITS if n != "test"]
        indices = _stratified_cut(train_labels, names, [spec.fractions[n] for n in names], rng)
        indices["test"] = np.arange(len(data.test))
        pools = {n: "test" if n == "test" else "train" for n in SPLITS}
    for name, size in spec.max_size.items():
        if size is not None:
            pool = data.test if pools[name] == "test" else data.train
            indices[name] = _cap(indices[name], pool.y.numpy(), int(size), rng)
    return Splits({n: indices[n] for n in SPLITS}, pools, data.name, spec)
