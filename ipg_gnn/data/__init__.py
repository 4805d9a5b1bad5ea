"""Input datasets and the disjoint splits every later stage relies on."""

from ipg_gnn.data.formats import DatasetFileError, read_cifar_batch, read_idx
from ipg_gnn.data.sources import (
    ImageDataset,
    Images,
    cifar10,
    digits,
    fashion_mnist,
    mnist,
    mnist_subset,
)
from ipg_gnn.data.splits import SPLITS, Splits, SplitSpec, make_splits
from ipg_gnn.data.tabular import adult, german_credit

__all__ = [
    "SPLITS",
    "DatasetFileError",
    "ImageDataset",
    "Images",
    "SplitSpec",
    "Splits",
    "adult",
    "cifar10",
    "digits",
    "fashion_mnist",
    "german_credit",
    "make_splits",
    "mnist",
    "mnist_subset",
    "read_cifar_batch",
    "read_idx",
]
