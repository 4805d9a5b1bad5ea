"""Activation-based detectors on exactly the inputs and splits of the GNN detector.

They read the units' activations from the IPGs themselves (each node's mean pre-activation, per
IPG layer), so every detector sees the same graphs of the same splits. Each turns activations
into a few features, fitted on the benign training graphs, and a logistic regression on the
training graphs (benign vs adversarial) turns the features into a score. Features and score are
torch ops (float64), so an adaptive attacker can differentiate each detector's own logit
(`FeatureDetector.logit`) from the input through the IPG:

* `Mahalanobis` (Lee et al., 2018): per layer, class-conditional Gaussians with a shared
  covariance; the feature is the largest class log-likelihood (minus the smallest Mahalanobis
  distance). The input-noise preprocessing of the paper is not used.
* `LID` (Ma et al., 2018): per layer, the local intrinsic dimensionality estimated from the
  `k` nearest benign training activations.
* `FlatActivations`: all activations concatenated, standardised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ipg_gnn.graphs import IPGDataset
from ipg_gnn.provenance import NODE_FEATURES


def unit_activations(x: torch.Tensor, spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Per IPG layer, the (graphs, units) float64 activations (node feature 0, the mean
    pre-activation) of node features `x` (graphs, nodes, features); `spans` holds each layer's
    (offset, num_units)."""
    a = x[:, :, 0].double()
    return [a[:, offset : offset + units] for offset, units in spans]


def layer_spans(layers: Sequence[Mapping]) -> list[tuple[int, int]]:
    """(offset, num_units) of each layer of a stored topology (`Topology.layers`)."""
    return [(layer["offset"], layer["num_units"]) for layer in layers]


@dataclass
class Activations:
    """Per-layer unit activations of a set of graphs, with their labels (float64 tensors; numpy
    arrays are converted)."""

    layers: list[torch.Tensor]  # one (graphs, units) tensor per IPG layer
    is_contrast: torch.Tensor
    true_label: torch.Tensor

    def __post_init__(self) -> None:
        self.layers = [torch.as_tensor(a, dtype=torch.float64) for a in self.layers]
        self.is_contrast = torch.as_tensor(self.is_contrast).long()
        self.true_label = torch.as_tensor(self.true_label).long()

    @classmethod
    def of(cls, dataset: IPGDataset) -> Activations:
        """The graphs' activations; graphs with label features (`IPGDataset.label_features`)
        get them as one more layer (the output units' label features), so these detectors see
        the true label as the GNN does."""
        meta = dataset.meta
        spans = layer_spans(dataset.topology.layers)
        x = unit_activations(meta["x"], spans)
        if dataset.label_features:
            offset, units = spans[-1]
            label = meta["x"][:, offset : offset + units, len(NODE_FEATURES) :]
            x.append(label.flatten(1).double())
        return cls(x, meta["is_contrast"], meta["true_label"])

    def reference(self) -> Activations:
        keep = self.is_contrast == 0
        return Activations(
            [a[keep] for a in self.layers], self.is_contrast[keep], self.true_label[keep]
        )


class FeatureDetector:
    """Features fitted on benign training activations, then a logistic regression."""

    def __init__(self, max_iter: int = 2000) -> None:
        self.classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))

    def fit_features(self, benign: Activations) -> None:
        raise NotImplementedError

    def features(self, layers: Sequence[torch.Tensor], training: bool = False) -> torch.Tensor:
        """(graphs, features) of per-layer activations `layers`, differentiable in them."""
        raise NotImplementedError

    def fit(self, train: Activations) -> FeatureDetector:
        self.fit_features(train.reference())
        features = self.features(train.layers, training=True)
        self.classifier.fit(features.numpy(), train.is_contrast.numpy())
        return self

    def logit(self, layers: Sequence[torch.Tensor]) -> torch.Tensor:
        """The logistic regression's logit per graph, as torch ops (the scaler and the linear
        model's fitted coefficients), so gradients reach the activations."""
        scaler, regression = self.classifier[0], self.classifier[-1]
        z = self.features(layers)
        z = (z - torch.from_numpy(scaler.mean_)) / torch.from_numpy(scaler.scale_)
        return z @ torch.from_numpy(regression.coef_[0]) + float(regression.intercept_[0])

    def score(self, acts: Activations) -> torch.Tensor:
        """P(adversarial) per graph."""
        with torch.no_grad():
            return self.logit(acts.layers).sigmoid()


class Mahalanobis(FeatureDetector):
    """Lee et al. (2018): minus the smallest class-conditional Mahalanobis distance, per layer."""

    def fit_features(self, benign: Activations) -> None:
        self.classes = benign.true_label.unique()
        self.means, self.precisions = [], []
        for a in benign.layers:
            means = torch.stack([a[benign.true_label == c].mean(0) for c in self.classes])
            centred = a - means[torch.searchsorted(self.classes, benign.true_label)]
            precision = LedoitWolf(assume_centered=True).fit(centred.numpy()).precision_
            self.means.append(means)
            self.precisions.append(torch.from_numpy(precision))

    def features(self, layers: Sequence[torch.Tensor], training: bool = False) -> torch.Tensor:
        cols = []
        for a, means, prec in zip(layers, self.means, self.precisions, strict=True):
            # (x - m) P (x - m)^T = xPx^T - 2 xPm^T + mPm^T, without a per-class copy of x.
            xp = a @ prec
            dist = (
                (xp * a).sum(1)[:, None]
                - 2 * xp @ means.T
                + torch.einsum("cu,uv,cv->c", means, prec, means)[None]
            )
            cols.append(-dist.amin(1))
        return torch.stack(cols, dim=1)


class LID(FeatureDetector):
    """Ma et al. (2018): local intrinsic dimensionality per layer among benign references."""

    def __init__(
        self, k: int = 20, reference_size: int = 1000, seed: int = 0, max_iter: int = 2000
    ) -> None:
        super().__init__(max_iter)
        self.k, self.reference_size, self.seed = k, reference_size, seed

    def fit_features(self, benign: Activations) -> None:
        rng = np.random.default_rng(self.seed)
        n = len(benign.is_contrast)
        self.reference_index = torch.from_numpy(rng.permutation(n)[: self.reference_size])
        self.references = [a[self.reference_index] for a in benign.layers]

    def features(self, layers: Sequence[torch.Tensor], training: bool = False) -> torch.Tensor:
        cols = []
        for a, reference in zip(layers, self.references, strict=True):
            # Exact distances (no matmul shortcut): the nearest ones decide the estimate.
            dist = torch.cdist(a, reference, compute_mode="donot_use_mm_for_euclid_dist")
            dist = dist.topk(self.k + 1, dim=1, largest=False).values
            # A training input that is itself a reference finds itself at distance 0: drop the
            # nearest neighbour when it is an exact match, else the farthest.
            if training:
                self_match = dist[:, :1] <= 1e-12
                dist = torch.where(self_match, dist[:, 1:], dist[:, :-1])
            else:
                dist = dist[:, :-1]
            dist = dist.clamp_min(1e-12)
            lid = torch.log(dist / dist[:, -1:]).mean(1).clamp(max=-1e-12)
            cols.append(-1.0 / lid)
        return torch.stack(cols, dim=1)


class FlatActivations(FeatureDetector):
    """Logistic regression on all activations concatenated."""

    def fit_features(self, benign: Activations) -> None:
        return None

    def features(self, layers: Sequence[torch.Tensor], training: bool = False) -> torch.Tensor:
        return torch.cat(list(layers), dim=1)
