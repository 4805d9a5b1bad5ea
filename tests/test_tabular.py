"""Tabular loaders: standard files in, [0, 1] one-hot/min-max rows and groups out."""

from __future__ import annotations

import pytest
import torch

from ipg_gnn.data import DatasetFileError, adult, german_credit

ADULT_ROWS = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, "
    "Male, 2174, 0, 40, United-States, <=50K",
    "50, Private, 83311, HS-grad, 9, Married-civ-spouse, Exec-managerial, Husband, Black, "
    "Female, 0, 0, 13, Cuba, >50K",
    "",
]
ADULT_TEST = [
    "|1x3 Cross validator",
    "61, ?, 100000, Masters, 14, Divorced, Sales, Unmarried, White, Female, 0, 0, 60, Peru, >50K.",
]


def _adult_files(root):
    folder = root / "uci-adult"
    folder.mkdir()
    (folder / "adult.data").write_text("\n".join(ADULT_ROWS))
    (folder / "adult.test").write_text("\n".join(ADULT_TEST))
    return root


def test_adult_rows_are_encoded_by_hand(tmp_path):
    d = adult(_adult_files(tmp_path))
    # 6 numeric columns + 2 categories in each of the 6 categorical ones left in (sex, race out).
    assert d.train.x.shape == (2, 1, 1, 6 + 6 * 2)
    assert d.train.y.tolist() == [0, 1] and d.test.y.tolist() == [1]
    assert d.train.groups["sex"].tolist() == [1, 0] and d.train.groups["race"].tolist() == [1, 0]
    assert d.test.groups["sex"].tolist() == [0] and d.test.groups["race"].tolist() == [1]
    row = d.test.x[0, 0, 0].tolist()
    # Columns in file order: age, workclass (2), fnlwgt, education (2), education-num, marital
    # status (2), occupation (2), relationship (2), capital gain, capital loss, hours, country (2).
    # Age (61 - 39) / (50 - 39), fnlwgt, education-num and hours lie above the training range:
    # clipped to 1; capital loss has no range: 0; workclass '?' and education 'Masters' were not
    # seen in training: all zeros in their blocks.
    assert row[0] == row[3] == row[6] == row[15] == 1.0
    assert row[14] == 0.0 and row[1:3] == [0.0, 0.0] and row[4:6] == [0.0, 0.0]
    assert row[7:9] == [0.0, 0.0]  # Divorced is unseen too; Sales, Unmarried, Peru as well
    assert float(d.train.x.min()) == 0.0 and float(d.train.x.max()) == 1.0


def test_adult_can_keep_the_sensitive_columns(tmp_path):
    d = adult(_adult_files(tmp_path), include_sensitive=True)
    assert d.train.x.shape[-1] == 6 + 8 * 2


def test_adult_names_missing_files_and_bad_lines(tmp_path):
    with pytest.raises(DatasetFileError, match="missing adult.data, adult.test in"):
        adult(tmp_path)
    _adult_files(tmp_path)
    (tmp_path / "uci-adult" / "adult.data").write_text("39, State-gov, 77516\n")
    with pytest.raises(DatasetFileError, match="adult.data: line 1 has 3 fields, expected 15"):
        adult(tmp_path)


def test_german_credit_groups_from_age_and_personal_status(tmp_path):
    folder = tmp_path / "german-credit"
    folder.mkdir()
    rows = [
        "A11 6 A34 A43 1169 A65 A75 4 A93 A101 4 A121 67 A143 A152 2 A173 1 A192 A201 1",
        "A12 48 A32 A43 5951 A61 A73 2 A92 A101 2 A121 22 A143 A152 1 A173 1 A191 A201 2",
        "A14 12 A34 A46 2096 A61 A74 2 A95 A101 3 A121 25 A143 A152 1 A172 2 A191 A201 1",
    ]
    (folder / "german.data").write_text("\n".join(rows) + "\n")
    d = german_credit(tmp_path)
    assert d.test is None and d.train.y.tolist() == [1, 0, 1]
    assert d.train.groups["age"].tolist() == [1, 0, 0]  # older than 25 (25 itself is not)
    assert d.train.groups["sex"].tolist() == [1, 0, 0]  # A93 male; A92, A95 female
    assert torch.all((d.train.x >= 0) & (d.train.x <= 1))
    # Numeric: 6 of the 7 (age left out); categorical: 13 minus a9, each with its categories.
    categories = sum(
        len(set(r.split()[i] for r in rows)) for i in (0, 2, 3, 5, 6, 9, 11, 13, 14, 16, 18, 19)
    )
    assert d.train.x.shape[-1] == 6 + categories
    # Subsets keep each input's groups with it.
    assert d.train.subset([2, 0]).groups["sex"].tolist() == [0, 1]
