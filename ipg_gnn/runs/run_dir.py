"""A run directory belongs to one run.

`claim(directory, task, cfg)` holds a lock on the directory while the run works (a second run
launched into it stops at once) and keeps an index, `run.json`: the run's id, task and config
hash, every artifact it wrote with its checksum, and whether it finished. A directory holding
another run's artifacts is refused; the same run (same task and config) may resume in it. A later
job loading the run (`repair.py`) checks the index: only a finished run, only artifacts whose
checksums match, so a target, splits and detector of different runs are never mixed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ipg_gnn.errors import UserError
from ipg_gnn.runs.io import ArtifactError, atomic_write_text, checksum, read_checked
from ipg_gnn.runs.keys import config_key, plain

RUN_INDEX = "run.json"
# Files of a run made before run.json existed: their presence alone means "another run".
_ARTIFACTS = ("splits.npz", "target.pt", "detector.pt", "repair_plan.json", "repaired.pt")


class RunDirectoryError(UserError, RuntimeError):
    """A run directory is in use by, or holds the artifacts of, another run."""


def config_hash(cfg: DictConfig) -> str:
    """Hash of a run's resolved config, leaving out where files go and how runs are logged."""
    return config_key({k: plain(v) for k, v in cfg.items() if k not in ("paths", "logger")})


@dataclass
class RunRecord:
    """The index of one run directory (`run.json`)."""

    directory: Path
    task: str
    config_hash: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    complete: bool = False
    artifacts: dict[str, str] = field(default_factory=dict)

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "directory"}
        atomic_write_text(json.dumps(data, indent=2), self.directory / RUN_INDEX)

    def add(self, *names: str) -> None:
        """Record artifacts (file names in the directory) with their checksums."""
        for name in names:
            self.artifacts[name] = checksum(self.directory / name)
        self.save()

    def finish(self) -> None:
        self.complete = True
        self.save()

    def holds(self, name: str) -> bool:
        """Whether artifact `name` is recorded and unchanged since: what a resumed run may
        take as done instead of computing it again."""
        path = self.directory / name
        return name in self.artifacts and path.is_file() and checksum(path) == self.artifacts[name]

    def verify(self, names: tuple[str, ...], remedy: str) -> None:
        """Each named artifact is recorded and unchanged since; else an error names it."""
        for name in names:
            path = self.directory / name
            if name not in self.artifacts:
                raise ArtifactError(f"{path} is not an artifact of run {self.run_id}; {remedy}")
            if not self.holds(name):
                raise ArtifactError(
                    f"{path} is missing or changed since run {self.run_id} wrote it; {remedy}"
                )


def read_record(directory: str | Path) -> RunRecord:
    """The index of a run directory."""
    directory = Path(directory)
    data: dict[str, Any] = read_checked(
        directory / RUN_INDEX,
        lambda f: json.loads(f.read_text()),
        "the directory is not a usable run: run the job again into a new directory",
    )
    return RunRecord(directory, **data)


@contextlib.contextmanager
def claim(directory: str | Path, task: str, cfg: DictConfig) -> Iterator[RunRecord]:
    """Own `directory` for this run while the block runs (see the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryError(
                f"{directory} is in use by another run; give this one its own hydra.run.dir"
            ) from None
        record = _own(directory, task, config_hash(cfg))
        record.save()
        yield record


def _own(directory: Path, task: str, digest: str) -> RunRecord:
    if (directory / RUN_INDEX).is_file():
        old = read_record(directory)
        if (old.task, old.config_hash) != (task, digest):
            raise RunDirectoryError(
                f"{directory} holds another run ({old.task} run {old.run_id}, started "
                f"{old.started}, config {old.config_hash}); give this run its own "
                "hydra.run.dir, or delete that directory"
            )
        old.complete = False  # resumed: finished again only when this run finishes
        return old
    found = [name for name in _ARTIFACTS if (directory / name).exists()]
    if found:
        raise RunDirectoryError(
            f"{directory} holds another run's artifacts ({', '.join(found)}); give this run its "
            "own hydra.run.dir, or delete them"
        )
    return RunRecord(directory, task, digest)
