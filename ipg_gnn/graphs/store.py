"""On-disk IPG storage: one topology per (model, capture config), graph stores per split.

Layout under a root directory::

    topology.pt                  model fingerprint, capture config, node table, shared edges
    <split>-<reference population>/manifest.json + shard_00000.pt ...
    <split>-<contrast population>/...

Per graph only what varies is stored: node features and edge contributions (plus edge indices
and weights in dynamic mode). Each shard is written to a temporary file and renamed into place,
so a shard file that exists is complete: an interrupted build resumes at the first missing shard.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ipg_gnn.errors import MissingFileError, UserError
from ipg_gnn.provenance import EDGE_FEATURES, NODE_FEATURES, CaptureConfig, IPGCapture
from ipg_gnn.runs.io import ArtifactError, atomic_save, atomic_write_text, checksum, read_checked

log = logging.getLogger(__name__)


class IPGStoreError(UserError, ValueError):
    """An IPG store does not match what it is loaded or resumed for."""


@dataclass
class Topology:
    """What all graphs of one model and capture config share."""

    fingerprint: str
    config: CaptureConfig
    layers: list[dict]
    edge_index: torch.Tensor | None  # (2, E) in static / dense mode
    weight: torch.Tensor | None  # (E,)
    static_pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def num_nodes(self) -> int:
        return sum(layer["num_units"] for layer in self.layers)

    def node_table(self) -> list[tuple[str, int]]:
        """(layer name, unit index) of every node, in node order."""
        return [(layer["name"], u) for layer in self.layers for u in range(layer["num_units"])]

    @classmethod
    def from_capture(cls, capturer: IPGCapture, fingerprint: str) -> Topology:
        shared = capturer.config.mode != "dynamic"
        edge_index, weight = capturer.topology() if shared else (None, None)
        return cls(
            fingerprint,
            capturer.config,
            [asdict(x) for x in capturer.plan.layers],
            edge_index,
            weight,
            capturer.static_pairs,
        )

    def save(self, root: Path) -> None:
        atomic_save(
            {
                "fingerprint": self.fingerprint,
                "config": asdict(self.config),
                "layers": self.layers,
                "edge_index": self.edge_index,
                "weight": self.weight,
                "static_pairs": self.static_pairs,
                "node_features": NODE_FEATURES,
                "edge_features": EDGE_FEATURES,
            },
            root / "topology.pt",
        )

    @classmethod
    def load(cls, root: str | Path) -> Topology:
        path = Path(root) / "topology.pt"
        if not path.is_file():
            raise MissingFileError(
                f"no IPG topology at {path.resolve()}; build the IPG datasets first (train.py), "
                "or run from the directory the train run was made in: a relative "
                "paths.cache_dir is resolved from the working directory"
            )
        d = read_checked(
            path,
            lambda f: torch.load(f, weights_only=False),
            "delete it (and the stores beside it) and build the IPG datasets again",
        )
        return cls(
            d["fingerprint"],
            CaptureConfig(**d["config"]),
            d["layers"],
            d["edge_index"],
            d["weight"],
            d["static_pairs"],
        )

    def check_model(self, fingerprint: str, where: str | Path) -> None:
        """Refuse graphs captured from another model."""
        if fingerprint != self.fingerprint:
            raise IPGStoreError(
                f"the IPGs in {where} were captured from model {self.fingerprint}, not from this "
                f"model ({fingerprint}); rebuild them for this model"
            )


@dataclass
class GraphStore:
    """A directory of shards holding the graphs of one split and one population.

    The manifest records what the store was built from (settings, the fingerprint of its
    inputs); each shard has a checksum file written after it, so a truncated or damaged shard is
    seen as missing and built again, and a store of other inputs or settings is rebuilt, never
    reused (it is a cache entry)."""

    directory: Path

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise MissingFileError(f"no IPG store at {self.directory}")
        return read_checked(
            self.manifest_path,
            lambda f: json.loads(f.read_text()),
            "delete the store's directory and build it again",
        )

    def shard_path(self, i: int) -> Path:
        return self.directory / f"shard_{i:05d}.pt"

    def _checksum_path(self, i: int) -> Path:
        return self.directory / f"shard_{i:05d}.sha256"

    def intact(self, i: int) -> bool:
        """Shard `i` exists and matches the checksum written after it."""
        shard, recorded = self.shard_path(i), self._checksum_path(i)
        return shard.is_file() and recorded.is_file() and recorded.read_text() == checksum(shard)

    def damaged(self) -> list[Path]:
        """The shards that are missing or do not match their checksum."""
        n = self.manifest()["num_shards"]
        return [self.shard_path(i) for i in range(n) if not self.intact(i)]

    def complete(self) -> bool:
        return self.manifest_path.is_file() and not self.damaged()

    def build(
        self,
        meta: Mapping[str, Any],
        num_items: int,
        shard_size: int,
        make_shard: Callable[[int, slice], dict[str, torch.Tensor]],
        progress: bool = True,
        desc: str = "IPGs",
    ) -> GraphStore:
        """Write the shards that are missing or damaged. `make_shard(i, items)` returns shard
        `i`'s tensors. A store begun with other settings or inputs is rebuilt from scratch."""
        if shard_size < 1:
            raise ValueError(f"ipg.shard_size must be >= 1; got {shard_size}")
        num_shards = -(-num_items // shard_size)
        manifest = {
            **meta,
            "num_items": num_items,
            "shard_size": shard_size,
            "num_shards": num_shards,
        }
        if self.manifest_path.is_file():
            try:
                stale = self.manifest() != manifest
            except ArtifactError:
                stale = True
            if stale:
                log.warning(
                    "%s holds graphs of other settings or inputs: rebuilding", self.directory
                )
                shutil.rmtree(self.directory)
        if not self.manifest_path.is_file():
            atomic_write_text(json.dumps(manifest, indent=2), self.manifest_path)
        todo = [i for i in range(num_shards) if not self.intact(i)]
        for i in tqdm(todo, desc=desc, disable=not progress or not todo, leave=False):
            items = slice(i * shard_size, min(num_items, (i + 1) * shard_size))
            atomic_save(make_shard(i, items), self.shard_path(i))
            atomic_write_text(checksum(self.shard_path(i)), self._checksum_path(i))
        return self

    def load(self) -> dict[str, torch.Tensor]:
        """All shards concatenated, checked against the manifest and their checksums."""
        manifest = self.manifest()
        damaged = self.damaged()
        if damaged:
            raise IPGStoreError(
                f"{self.directory} is unfinished or damaged (missing or bad: "
                f"{', '.join(p.name for p in damaged)}); run the build again to rebuild them"
            )
        shards = [
            torch.load(self.shard_path(i), weights_only=True) for i in range(manifest["num_shards"])
        ]
        data = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        if len(data["source_index"]) != manifest["num_items"]:
            raise IPGStoreError(
                f"{self.directory}: shards hold {len(data['source_index'])} "
                f"graphs, the manifest says {manifest['num_items']}"
            )
        return data
