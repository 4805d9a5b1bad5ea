"""Datasets and splits: real formats written as fixtures, bad input, split invariants."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from ipg_gnn.data import (
    SPLITS,
    DatasetFileError,
    ImageDataset,
    Images,
    Splits,
    SplitSpec,
    cifar10,
    digits,
    make_splits,
    mnist,
    mnist_subset,
    read_idx,
    sources,
)

FRACTIONS = {"target_train": 0.5, "ipg_train": 0.2, "ipg_val": 0.05, "repair": 0.1, "test": 0.15}


def write_idx(path, array: np.ndarray) -> None:
    """Write `array` (uint8) in the IDX format, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def write_mnist_fixture(folder, n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    for name, arr in arrays.items():
        write_idx(folder / name, arr)
    return arrays


def test_idx_roundtrip_and_scaling(tmp_path):
    arrays = write_mnist_fixture(tmp_path / "mnist")
    assert np.array_equal(
        read_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"),
        arrays["t10k-labels-idx1-ubyte.gz"],
    )
    data = mnist(tmp_path)
    assert data.train.x.shape == (60, 1, 28, 28) and data.test.x.shape == (20, 1, 28, 28)
    expected = arrays["train-images-idx3-ubyte.gz"][3] / 255.0
    assert torch.allclose(data.train.x[3, 0], torch.from_numpy(expected).float())
    assert 0.0 <= float(data.train.x.min()) and float(data.train.x.max()) <= 1.0


def test_truncated_idx_is_refused(tmp_path):
    write_mnist_fixture(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetFileError, match="truncated"):
        mnist(tmp_path)


def test_corrupt_gzip_is_refused(tmp_path):
    write_mnist_fixture(tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetFileError, match="t10k-images-idx3-ubyte.gz"):
        mnist(tmp_path)


def test_bad_magic_is_refused(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(DatasetFileError, match="not an IDX file"):
        read_idx(path)


def test_missing_files_name_files_and_directory(tmp_path):
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.arange(10))
    with pytest.raises(DatasetFileError) as err:
        mnist(tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "train-labels-idx1-ubyte.gz" not in msg
    assert str((tmp_path / "mnist").resolve()) in msg and "download=true" in msg


def test_failed_download_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(DatasetFileError) as err:
        mnist(tmp_path, download=True)
    msg = str(err.value)
    assert "could not download" in msg and str((tmp_path / "mnist").resolve()) in msg
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert not any((tmp_path / "mnist").iterdir()), "a failed download left partial files"


def write_cifar_fixture(folder, n_per_batch=12, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n_per_batch)),
            b"batch_label": name.encode(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar_loader_reads_standard_pickles(tmp_path):
    write_cifar_fixture(tmp_path / "cifar-10-batches-py")
    data = cifar10(tmp_path)
    assert data.train.x.shape == (60, 3, 32, 32) and data.test.x.shape == (12, 3, 32, 32)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    # Channel-major layout: the first 1024 values are the red plane of the first image.
    assert torch.allclose(
        data.train.x[12, 0].flatten() * 255, torch.from_numpy(raw[0, :1024]).float()
    )


def test_corrupt_cifar_pickle_is_refused(tmp_path):
    write_cifar_fixture(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetFileError, match="data_batch_3"):
        cifar10(tmp_path)


def test_missing_cifar_names_files(tmp_path):
    with pytest.raises(DatasetFileError, match="test_batch"):
        cifar10(tmp_path)


def test_embedded_datasets_are_real_and_scaled():
    sub, dig = mnist_subset(), digits()
    assert sub.train.x.shape == (5000, 1, 28, 28) and sub.test is None
    assert np.bincount(sub.train.y.numpy()).tolist() == [500] * 10
    assert dig.train.x.shape == (1797, 1, 8, 8)
    for d in (sub, dig):
        assert float(d.train.x.min()) == 0.0 and float(d.train.x.max()) == 1.0


@pytest.mark.parametrize(
    "fractions, match",
    [
        ({**FRACTIONS, "test": 0.3}, "add up to 1"),
        ({k: v for k, v in FRACTIONS.items() if k != "repair"}, "exactly"),
        ({**FRACTIONS, "test": 0.0, "target_train": 0.65}, r"\(0, 1\)"),
    ],
)
def test_bad_split_fractions_are_refused(fractions, match):
    with pytest.raises(ValueError, match=match):
        SplitSpec(fractions)


def _toy(n_train=1000, n_test=None) -> ImageDataset:
    def images(n):
        return Images(torch.rand(n, 1, 2, 2), torch.arange(n) % 10)

    return ImageDataset("toy", images(n_train), images(n_test) if n_test else None, 10)


def test_splits_are_disjoint_complete_stratified_and_seeded(tmp_path):
    data = _toy()
    splits = make_splits(data, SplitSpec(FRACTIONS, seed=3))
    all_idx = np.concatenate([splits.indices[s] for s in SPLITS])
    assert len(all_idx) == len(set(all_idx.tolist())) == 1000
    for s in SPLITS:
        counts = np.bincount(data.train.y.numpy()[splits.indices[s]], minlength=10)
        assert counts.max() - counts.min() <= 1, (s, counts)
        assert abs(len(splits.indices[s]) - 1000 * FRACTIONS[s]) <= 10
    again = make_splits(data, SplitSpec(FRACTIONS, seed=3))
    other = make_splits(data, SplitSpec(FRACTIONS, seed=4))
    assert all(np.array_equal(splits.indices[s], again.indices[s]) for s in SPLITS)
    assert not np.array_equal(splits.indices["test"], other.indices["test"])
    splits.save(tmp_path)
    loaded = Splits.load(tmp_path)
    assert all(np.array_equal(splits.indices[s], loaded.indices[s]) for s in SPLITS)
    assert loaded.pools == splits.pools


def test_official_test_set_feeds_only_the_test_split():
    data = _toy(n_train=850, n_test=300)
    splits = make_splits(data, SplitSpec(FRACTIONS, max_size={"test": 100}))
    assert splits.pools["test"] == "test" and len(splits.indices["test"]) == 100
    assert all(splits.pools[s] == "train" for s in SPLITS if s != "test")
    train_parts = np.concatenate([splits.indices[s] for s in SPLITS if s != "test"])
    assert len(train_parts) == 850 == len(set(train_parts.tolist()))
    # Proportions of the four training-pool splits are kept: 0.5 / 0.85 of 850 = 500.
    assert len(splits.indices["target_train"]) == 500
    assert np.bincount(splits.images(data, "test").y.numpy()).tolist() == [10] * 10


def test_datasets_refuse_non_finite_inputs_and_labels_out_of_range():
    x = torch.rand(4, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 1])
    ImageDataset("ok", Images(x, y), None, 3)
    bad = x.clone()
    bad[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="input 2 holds NaN or inf"):
        ImageDataset("nan", Images(bad, y), None, 3)
    with pytest.raises(ValueError, match="input 3 has label 255, outside 0..2"):
        ImageDataset("labels", Images(x, torch.tensor([0, 1, 2, 255])), None, 3)
