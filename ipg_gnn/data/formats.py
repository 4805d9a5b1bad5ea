"""Parsers for the standard on-disk dataset formats (IDX, CIFAR pickles), in numpy only.

torchvision is deliberately not used: its builds here need CUDA libraries. Every parser checks
the file against its format and raises :class:`DatasetFileError` naming the file, so a truncated
download never turns into a silently short dataset.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np

from ipg_gnn.errors import UserError


class DatasetFileError(UserError, ValueError):
    """A dataset file is missing, truncated or not in the expected format."""


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping `.gz`; a broken gzip stream is a format error."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetFileError(
            f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'} ({e}); "
            "it is probably truncated or corrupt: delete it and fetch it again"
        ) from e


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format): 2 zero bytes, a type code, the rank, then big-endian
    dimension sizes and the data."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetFileError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFileError(f"{path}: IDX header truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetFileError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} bytes; it is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one `cifar-10-batches-py` pickle into uint8 images (N, 3, 32, 32) and int labels."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DatasetFileError(f"{path}: not a readable CIFAR batch pickle ({e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetFileError(f"{path}: a CIFAR batch must be a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetFileError(
            f"{path}: CIFAR data has shape {data.shape} with {len(labels)} labels; "
            "expected (N, 3072) with N labels"
        )
    return data.reshape(-1, 3, 32, 32), labels
