"""IPG datasets as PyG datasets: the graphs of one or more stores under one topology.

An IPG holds the model's activations and contributions, not the input's true label, which every
output-based membership score (loss, confidence, LiRA) uses. `label_features=True` gives each
graph the label as node features (`LABEL_FEATURES`, appended after the capture's), computed
from what the stores already hold (the output units' values and `true_label`): the stores are
the same with or without them, so no cache holds graphs of either kind. Given reference
models' logits on the same inputs (the membership audit's shadow models), a third feature
calibrates the margins by what models that never saw the input make of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Data, Dataset

from ipg_gnn.graphs.store import GraphStore, IPGStoreError, Topology
from ipg_gnn.targets import logit_confidence

#: Node features of `IPGDataset(label_features=True)`, after the capture's own; zero on every
#: unit but the output layer's (one unit per class).
LABEL_FEATURES = ("true_class", "true_margin")
#: The node feature that `IPGDataset(reference_logits=...)` adds after `LABEL_FEATURES`.
CALIBRATED_FEATURE = "calibrated_margin"


def true_margins(logits: torch.Tensor, true_label: torch.Tensor) -> torch.Tensor:
    """(inputs, classes): how far the true class's logit z_y lies above each z_k, and at the
    true class the logit-scaled confidence z_y - logsumexp(z_other) (LiRA's statistic)."""
    z = logits.double()
    true_class = nn.functional.one_hot(true_label, z.shape[1]).bool()
    margin = z.gather(1, true_label[:, None]) - z
    return torch.where(true_class, logit_confidence(z, true_label)[:, None], margin)


def label_node_features(
    x: torch.Tensor,
    true_label: torch.Tensor,
    topology: Topology,
    reference_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label features of node features `x` (graphs, nodes, features), on the output layer (the
    topology's last; node feature 0 is a unit's value, the logit): `true_class` is 1 on the
    true class's unit; `true_margin` is `true_margins` of the logits, per output unit. With
    `reference_logits` (models, graphs, classes: reference models' logits on the same inputs)
    also `CALIBRATED_FEATURE`, the true margins minus the reference models' mean of theirs
    (difficulty calibration; on the true unit, the numerator of LiRA offline)."""
    output = topology.layers[-1]
    offset, classes = output["offset"], output["num_units"]
    if len(true_label) and not 0 <= int(true_label.min()) <= int(true_label.max()) < classes:
        raise IPGStoreError(
            f"label features: labels {int(true_label.min())}..{int(true_label.max())} do not "
            f"index the {classes} units of the last IPG layer {output['name']!r}; they need a "
            "model whose last captured layer is its output (one unit per class)"
        )
    margin = true_margins(x[:, offset : offset + classes, 0], true_label)
    columns = [nn.functional.one_hot(true_label, classes).double(), margin]
    if reference_logits is not None:
        if reference_logits.shape[1:] != margin.shape:
            raise ValueError(
                f"reference_logits must be (models, {len(margin)}, {classes}); "
                f"got {tuple(reference_logits.shape)}"
            )
        reference = torch.stack([true_margins(z, true_label) for z in reference_logits])
        columns.append(margin - reference.mean(0))
    out = x.new_zeros(*x.shape[:2], len(columns))
    out[:, offset : offset + classes] = torch.stack(columns, 2).to(x.dtype)
    return out


class IPGDataset(Dataset):
    """Graphs of the given stores (e.g. `test-benign` and `test-pgd`), labelled `y = 1` for a
    contrast population's graphs, `y = 0` for the reference population's. Pass `fingerprint`
    to refuse graphs captured from another model.

    Each `Data` carries `x`, `edge_index`, `edge_attr` (contribution, weight), `y`, and the
    metadata `source_index`, `true_label`, `pred`, `success` and `population_id` (an index into
    `self.populations`). With `label_features`, `x` ends with the `LABEL_FEATURES` columns;
    with `reference_logits` (models, graphs, classes; graphs in this dataset's order) too,
    then with `CALIBRATED_FEATURE` as well (`label_node_features`)."""

    def __init__(
        self,
        root: str | Path,
        stores: Sequence[str],
        fingerprint: str | None = None,
        transform=None,
        label_features: bool = False,
        reference_logits: torch.Tensor | None = None,
    ) -> None:
        super().__init__(None, transform)
        self.root_dir = Path(root)
        self.topology = Topology.load(self.root_dir)
        if fingerprint is not None:
            self.topology.check_model(fingerprint, self.root_dir)
        if not stores:
            raise ValueError("an IPG dataset needs at least one store")
        parts, self.populations, population_ids = [], [], []
        for name in stores:
            store = GraphStore(self.root_dir / name)
            manifest = store.manifest()
            if manifest["fingerprint"] != self.topology.fingerprint:
                raise ValueError(
                    f"{store.directory} was built for another model than the "
                    f"topology in {self.root_dir}"
                )
            part = store.load()
            name = manifest["population"]
            if name not in self.populations:
                self.populations.append(name)
            population_ids.append(torch.full((len(part["x"]),), self.populations.index(name)))
            parts.append(part)
        self.tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self.tensors["population_id"] = torch.cat(population_ids)
        self.dynamic = "edge_index" in self.tensors
        self.label_features = label_features or reference_logits is not None
        if self.label_features:
            t = self.tensors
            label = label_node_features(t["x"], t["true_label"], self.topology, reference_logits)
            t["x"] = torch.cat([t["x"], label], 2)

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
            y=t["is_contrast"][idx].long().view(1),
            num_nodes=t["x"].shape[1],
            source_index=t["source_index"][idx].view(1),
            true_label=t["true_label"][idx].view(1),
            pred=t["pred"][idx].view(1),
            success=t["success"][idx].view(1),
            population_id=t["population_id"][idx].view(1),
        )

    @property
    def meta(self) -> dict[str, torch.Tensor]:
        """The per-graph tensors of this dataset (or of this view, after `dataset[indices]`)."""
        index = torch.as_tensor(list(self.indices()), dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}

    def select_contrasts(self, names: Sequence[str]) -> IPGDataset:
        """A view with the reference graphs and the graphs of the given contrast populations
        only (nothing is loaded again)."""
        unknown = set(names) - set(self.populations)
        if unknown:
            raise KeyError(
                f"no graphs of populations {sorted(unknown)}; this dataset has {self.populations}"
            )
        meta = self.meta
        keep = ~meta["is_contrast"] | torch.isin(
            meta["population_id"], torch.tensor([self.populations.index(a) for a in names])
        )
        return self[torch.nonzero(keep).flatten()]

    @property
    def labels(self) -> torch.Tensor:
        """`y` of every graph (1 = contrast population), without building `Data` objects."""
        return self.meta["is_contrast"].long()

    @property
    def contrasts(self) -> list[str]:
        """The contrast populations among `populations`, in order."""
        meta = self.meta
        ids = meta["population_id"][meta["is_contrast"]].unique().tolist()
        return [p for i, p in enumerate(self.populations) if i in ids]
