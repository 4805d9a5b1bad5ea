"""Atomic file writes: a file that exists is complete.

Every artefact is written to a temporary file beside its destination and renamed into place, so
an interrupted run never leaves a half-written checkpoint, shard or manifest that a later run
would take for a finished one. The file gets the permissions the umask gives an ordinary new
file (a temporary file alone would be private), so a cache can be shared by a team.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import torch

from ipg_gnn.errors import MissingFileError, UserError

T = TypeVar("T")


class ArtifactError(UserError, ValueError):
    """A file the project wrote is damaged, or belongs with other files than it is used with;
    the message names the file and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write` on a temporary binary file, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` of `obj`, atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> Path:
    """A text file (UTF-8), atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def checksum(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checked(path: str | Path, read: Callable[[Path], T], remedy: str) -> T:
    """`read(path)`, with any failure to parse the file (truncated, corrupt, not the format)
    reported as an :class:`ArtifactError` naming the file and `remedy`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} is missing; {remedy}")
    try:
        return read(path)
    except Exception as e:  # torch, numpy and json each raise their own kinds
        raise ArtifactError(f"{path} is damaged ({type(e).__name__}: {e}); {remedy}") from e
