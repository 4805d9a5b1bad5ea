"""Activation-based detectors on exactly the inputs and splits of the GNN detector.

They read the units' activations from the IPGs themselves (each node's mean pre-activation, per
IPG layer), so every detector sees the same graphs of the same splits. Each turns activations
into a few features, fitted on the benign training graphs, and a logistic regression on the
training graphs (benign vs adversarial) turns the features into a score:

* `Mahalanobis` (Lee et al., 2018): per layer, class-conditional Gaussians with a shared
  covariance; the feature is the largest class log-likelihood (minus the smallest Mahalanobis
  distance). The input-noise preprocessing of the paper is not used.
* `LID` (Ma et al., 2018): per layer, the local intrinsic dimensionality estimated from the
  `k` nearest benign training activations.
* `FlatActivations`: all activations concatenated, standardised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ipg_gnn.graphs import IPGDataset


@dataclass
class Activations:
    """Per-layer unit activations of a set of graphs, with their labels."""

    layers: list[np.ndarray]  # one (graphs, units) array per IPG layer
    is_contrast: np.ndarray
    true_label: np.ndarray

    @classmethod
    def of(cls, dataset: IPGDataset) -> Activations:
        meta = dataset.meta
        x = meta["x"][:, :, 0].double().numpy()
        layers = [
            x[:, layer["offset"] : layer["offset"] + layer["num_units"]]
            for layer in dataset.topology.layers
        ]
        return cls(layers, meta["is_contrast"].long().numpy(), meta["true_label"].numpy())

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

    def features(self, acts: Activations, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train: Activations) -> FeatureDetector:
        self.fit_features(train.reference())
        self.classifier.fit(self.features(train, training=True), train.is_contrast)
        return self

    def score(self, acts: Activations) -> np.ndarray:
        """P(adversarial) per graph."""
        return self.classifier.predict_proba(self.features(acts))[:, 1]


class Mahalanobis(FeatureDetector):
    """Lee et al. (2018): minus the smallest class-conditional Mahalanobis distance, per layer."""

    def fit_features(self, benign: Activations) -> None:
        self.classes = np.unique(benign.true_label)
        self.means, self.precisions = [], []
        for a in benign.layers:
            means = np.stack([a[benign.true_label == c].mean(0) for c in self.classes])
            centred = a - means[np.searchsorted(self.classes, benign.true_label)]
            self.means.append(means)
            self.precisions.append(LedoitWolf(assume_centered=True).fit(centred).precision_)

    def features(self, acts: Activations, training: bool = False) -> np.ndarray:
        cols = []
        for a, means, prec in zip(acts.layers, self.means, self.precisions, strict=True):
            # (x - m) P (x - m)^T = xPx^T - 2 xPm^T + mPm^T, without a per-class copy of x.
            xp = a @ prec
            dist = (
                (xp * a).sum(1)[:, None]
                - 2 * xp @ means.T
                + np.einsum("cu,uv,cv->c", means, prec, means)[None]
            )
            cols.append(-dist.min(1))
        return np.stack(cols, axis=1)


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
        self.reference_index = rng.permutation(n)[: min(self.reference_size, n)]
        self.neighbours = [
            NearestNeighbors(n_neighbors=self.k + 1).fit(a[self.reference_index])
            for a in benign.layers
        ]

    def features(self, acts: Activations, training: bool = False) -> np.ndarray:
        cols = []
        for a, nn_index in zip(acts.layers, self.neighbours, strict=True):
            dist, _ = nn_index.kneighbors(a)
            # A training input that is itself a reference finds itself at distance 0: drop the
            # nearest neighbour when it is an exact match, else the farthest.
            self_match = dist[:, :1] <= 1e-12
            dist = np.where(self_match, dist[:, 1:], dist[:, :-1]) if training else dist[:, :-1]
            dist = np.maximum(dist, 1e-12)
            cols.append(-1.0 / np.mean(np.log(dist / dist[:, -1:]), axis=1).clip(max=-1e-12))
        return np.stack(cols, axis=1)


class FlatActivations(FeatureDetector):
    """Logistic regression on all activations concatenated."""

    def fit_features(self, benign: Activations) -> None:
        return None

    def features(self, acts: Activations, training: bool = False) -> np.ndarray:
        return np.concatenate(acts.layers, axis=1)
