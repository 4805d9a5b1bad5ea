"""IPG datasets as PyG datasets: the graphs of one or more stores under one topology."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.data import Data, Dataset

from ipg_gnn.graphs.store import GraphStore, Topology


class IPGDataset(Dataset):
    """Graphs of the given stores (e.g. `test-benign` and `test-pgd`), labelled `y = 1` for
    adversarial inputs. Pass `fingerprint` to refuse graphs captured from another model.

    Each `Data` carries `x`, `edge_index`, `edge_attr` (contribution, weight), `y`, and the
    metadata `source_index`, `true_label`, `pred`, `success` and `attack_id` (an index into
    `self.attacks`)."""

    def __init__(
        self,
        root: str | Path,
        stores: Sequence[str],
        fingerprint: str | None = None,
        transform=None,
    ) -> None:
        super().__init__(None, transform)
        self.root_dir = Path(root)
        self.topology = Topology.load(self.root_dir)
        if fingerprint is not None:
            self.topology.check_model(fingerprint, self.root_dir)
        if not stores:
            raise ValueError("an IPG dataset needs at least one store")
        parts, self.attacks, attack_ids = [], [], []
        for name in stores:
            store = GraphStore(self.root_dir / name)
            manifest = store.manifest()
            if manifest["fingerprint"] != self.topology.fingerprint:
                raise ValueError(
                    f"{store.directory} was built for another model than the "
                    f"topology in {self.root_dir}"
                )
            part = store.load()
            if manifest["attack"] not in self.attacks:
                self.attacks.append(manifest["attack"])
            attack_ids.append(torch.full((len(part["x"]),), self.attacks.index(manifest["attack"])))
            parts.append(part)
        self.tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self.tensors["attack_id"] = torch.cat(attack_ids)
        self.dynamic = "edge_index" in self.tensors

    def len(self) -> int:
        return len(self.tensors["x"])

    def get(self, idx: int) -> Data:
        t = self.tensors
        edge_index = t["edge_index"][idx] if self.dynamic else self.topology.edge_index
        weight = t["weight"][idx] if self.dynamic else self.topology.weight
        return Data(
            x=t["x"][idx],
            edge_index=edge_index,
            edge_attr=torch.stack([t["contribution"][idx], weight], dim=1),
            y=t["is_adv"][idx].long().view(1),
            num_nodes=t["x"].shape[1],
            source_index=t["source_index"][idx].view(1),
            true_label=t["true_label"][idx].view(1),
            pred=t["pred"][idx].view(1),
            success=t["success"][idx].view(1),
            attack_id=t["attack_id"][idx].view(1),
        )

    @property
    def meta(self) -> dict[str, torch.Tensor]:
        """The per-graph tensors of this dataset (or of this view, after `dataset[indices]`)."""
        index = torch.as_tensor(list(self.indices()), dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}

    def select_attacks(self, attacks: Sequence[str]) -> IPGDataset:
        """A view with the benign graphs and the adversarial graphs of the given attacks only
        (nothing is loaded again)."""
        unknown = set(attacks) - set(self.attacks)
        if unknown:
            raise KeyError(
                f"no graphs of attacks {sorted(unknown)}; this dataset has {self.attacks}"
            )
        meta = self.meta
        keep = ~meta["is_adv"] | torch.isin(
            meta["attack_id"], torch.tensor([self.attacks.index(a) for a in attacks])
        )
        return self[torch.nonzero(keep).flatten()]

    @property
    def labels(self) -> torch.Tensor:
        """`y` of every graph (1 = adversarial), without building `Data` objects."""
        return self.meta["is_adv"].long()
