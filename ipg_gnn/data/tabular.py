"""Tabular datasets with sensitive attributes (UCI Adult, Statlog German credit).

Each row becomes a (1, 1, F) "image" so every stage (MLP targets, capture, attacks with inputs in
[0, 1]) takes it unchanged: categorical columns are one-hot, numeric ones min-max scaled to
[0, 1] with the training pool's range (test values outside it are clipped). The sensitive
attributes travel beside the inputs as `Images.groups` (binary: 1 is the group the literature
calls privileged) and are left out of the model's input unless `include_sensitive=True`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ipg_gnn.data.formats import DatasetFileError
from ipg_gnn.data.sources import ImageDataset, Images, _download, _missing, _missing_error

ADULT_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
ADULT_FILES = ("adult.data", "adult.test")
ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
    "native-country", "income",
)  # fmt: skip
ADULT_NUMERIC = frozenset(
    ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
)
GERMAN_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/statlog/german/"
GERMAN_FILES = ("german.data",)
# Attribute 13 is age; 2, 5, 8, 11, 13, 16, 18 are numeric (UCI's german.doc).
GERMAN_NUMERIC = frozenset((1, 4, 7, 10, 12, 15, 17))
# Personal status and sex (attribute 9): A91, A93, A94 are male, A92 and A95 female.
GERMAN_MALE = frozenset(("A91", "A93", "A94"))


@dataclass(frozen=True)
class Table:
    """Raw rows: `columns[name]` holds each row's value as text."""

    columns: dict[str, np.ndarray]
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def _read_rows(path: Path, sep: str | None, width: int, skip: int) -> list[list[str]]:
    """Rows of `width` fields; blank lines skipped, any other short or long row names its line."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines()[skip:], start=skip + 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(sep)]
        if len(fields) != width:
            raise DatasetFileError(
                f"{path}: line {number} has {len(fields)} fields, expected {width}; the file is "
                "not the standard one or it is damaged"
            )
        rows.append(fields)
    if not rows:
        raise DatasetFileError(f"{path} holds no rows")
    return rows


def _encode(
    tables: Sequence[Table], numeric: Callable[[str], bool], leave_out: Sequence[str]
) -> list[torch.Tensor]:
    """One-hot categoricals and [0, 1]-scaled numerics, with the first table's categories and
    ranges (unseen categories encode as all zeros), as (N, 1, 1, F) float32."""
    fit = tables[0]
    parts: list[list[np.ndarray]] = [[] for _ in tables]
    for name, values in fit.columns.items():
        if name in leave_out:
            continue
        if numeric(name):
            lo, hi = values.astype(np.float64).min(), values.astype(np.float64).max()
            span = hi - lo if hi > lo else 1.0
            for out, table in zip(parts, tables, strict=True):
                col = (table.columns[name].astype(np.float64) - lo) / span
                out.append(np.clip(col, 0.0, 1.0)[:, None])
        else:
            categories = np.unique(values)
            for out, table in zip(parts, tables, strict=True):
                out.append((table.columns[name][:, None] == categories[None, :]).astype(float))
    return [
        torch.from_numpy(np.concatenate(p, axis=1).astype(np.float32)[:, None, None, :])
        for p in parts
    ]


def _dataset(
    name: str,
    tables: Sequence[Table],
    groups: Callable[[Table], dict[str, np.ndarray]],
    numeric: Callable[[str], bool],
    sensitive_columns: Sequence[str],
    include_sensitive: bool,
) -> ImageDataset:
    leave_out = () if include_sensitive else sensitive_columns
    xs = _encode(tables, numeric, leave_out)
    parts = [
        Images(
            x,
            torch.from_numpy(t.label.astype(np.int64)),
            {k: torch.from_numpy(v.astype(np.int64)) for k, v in groups(t).items()},
        )
        for x, t in zip(xs, tables, strict=True)
    ]
    return ImageDataset(name, parts[0], parts[1] if len(parts) > 1 else None, 2)


def _ensure(name: str, folder: Path, files: tuple[str, ...], url: str, download: bool) -> None:
    """Fetch missing files when asked to; else name what is missing and where it goes."""
    if download:
        for file in _missing(folder, files):
            try:
                _download(url + file, folder / file)
            except OSError as e:
                raise DatasetFileError(
                    f"{name}: could not download {url + file} ({e}). Put "
                    f"{', '.join(files)} in {folder.resolve()} by hand."
                ) from e
    missing = _missing(folder, files)
    if missing:
        raise _missing_error(
            name, folder, missing, f"Put the standard files there (from {url}), or set "
            "dataset.source.download=true.",
        )  # fmt: skip


def _adult_table(path: Path, skip: int) -> Table:
    rows = np.array(_read_rows(path, ",", len(ADULT_COLUMNS), skip))
    columns = {c: rows[:, i] for i, c in enumerate(ADULT_COLUMNS[:-1])}
    income = np.char.rstrip(rows[:, -1], ".")  # adult.test's labels end with '.'
    unknown = set(income) - {"<=50K", ">50K"}
    if unknown:
        raise DatasetFileError(f"{path}: unknown income labels {sorted(unknown)}")
    return Table(columns, (income == ">50K").astype(np.int64))


def adult(
    data_dir: str | Path = "data",
    download: bool = False,
    folder: str = "uci-adult",
    include_sensitive: bool = False,
) -> ImageDataset:
    """UCI Adult (32,561 train / 16,281 test rows; label: income > 50K) from `adult.data` and
    `adult.test`. Groups: `sex` (1 male) and `race` (1 White); a missing value ('?') is a
    category of its own, so no row is dropped."""
    root = Path(data_dir) / folder
    _ensure("adult", root, ADULT_FILES, ADULT_URL, download)
    # adult.test opens with a line that is not a row ("|1x3 Cross validator").
    tables = [_adult_table(root / "adult.data", 0), _adult_table(root / "adult.test", 1)]

    def groups(t: Table) -> dict[str, np.ndarray]:
        return {"sex": t.columns["sex"] == "Male", "race": t.columns["race"] == "White"}

    return _dataset(
        "adult", tables, groups, ADULT_NUMERIC.__contains__, ("sex", "race"), include_sensitive
    )


def german_credit(
    data_dir: str | Path = "data",
    download: bool = False,
    folder: str = "german-credit",
    include_sensitive: bool = False,
) -> ImageDataset:
    """Statlog German credit (1,000 rows, no official test set; label 1: good credit) from
    `german.data`. Groups: `age` (1 older than 25) and `sex` (1 male, from attribute 9, the
    personal status); attribute 9 and age are left out of the input unless included."""
    root = Path(data_dir) / folder
    _ensure("german_credit", root, GERMAN_FILES, GERMAN_URL, download)
    rows = np.array(_read_rows(root / "german.data", None, 21, 0))
    labels = rows[:, -1]
    if set(labels) - {"1", "2"}:
        raise DatasetFileError(f"{root / 'german.data'}: labels must be 1 (good) or 2 (bad)")
    table = Table({f"a{i + 1}": rows[:, i] for i in range(20)}, (labels == "1").astype(np.int64))

    def groups(t: Table) -> dict[str, np.ndarray]:
        return {
            "age": t.columns["a13"].astype(np.float64) > 25,
            "sex": np.isin(t.columns["a9"], list(GERMAN_MALE)),
        }

    numeric = {f"a{i + 1}" for i in GERMAN_NUMERIC}.__contains__
    return _dataset("german_credit", [table], groups, numeric, ("a9", "a13"), include_sensitive)
