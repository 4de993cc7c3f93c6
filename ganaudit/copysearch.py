"""Searching image batches against the training index, under test-time augmentations.

One pass over a batch embeds every variant, finds each variant's k+1 nearest training
images, scores it, and keeps per image the variant with the most suspicious score. The
identity variant's features are returned too, so the caller embeds each image once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ganaudit.augment import variants
from ganaudit.embedders.base import Embedder
from ganaudit.index import FlatIndex
from ganaudit.metrics.copy_stats import cosine_to_distance, relative_nn_score


@dataclass
class Matches:
    """Best training match per image, all arrays of length M.

    Attributes:
        score: relative nearest-neighbour score (smaller is more copy-like), float64.
        distance: Euclidean distance to the matched training image (in feature space).
        similarity: cosine similarity for inner-product embedders, else NaN.
        train_index: the matched training image, int64.
        augmentation: index into ``names`` of the variant that matched, int16.
        names: the variant names.
    """

    score: np.ndarray
    distance: np.ndarray
    similarity: np.ndarray
    train_index: np.ndarray
    augmentation: np.ndarray
    names: list[str]

    @staticmethod
    def concatenate(parts: list["Matches"]) -> "Matches":
        fields = ("score", "distance", "similarity", "train_index", "augmentation")
        joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
        return Matches(**joined, names=parts[0].names)


class CopySearcher:
    """Scores images against a training index: ``(features, matches) = searcher(images)``."""

    def __init__(self, index: FlatIndex, embedder: Embedder, augmentations: tuple[str, ...], nearest_k: int):
        self.index = index
        self.embedder = embedder
        self.augmentations = augmentations
        self.k = min(nearest_k, index.ntotal - 2)
        if self.k < 1:
            raise ValueError("the training set needs at least 3 images")

    def __call__(self, images: torch.Tensor, exclude: np.ndarray | None = None) -> tuple[np.ndarray, Matches]:
        """Embed and search one batch.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1].
            exclude: optional ``(B,)`` training indices the images themselves are (leave-one-out
                calibration on the training set).

        Returns:
            ``(features (B, D) float32 of the identity variant, Matches)``.
        """
        best, identity_feats, names = None, None, []
        for a, (name, view) in enumerate(variants(images, self.augmentations)):
            feats = self.embedder.embed(view)
            if identity_feats is None:
                identity_feats = feats
            names.append(name)
            current = self._score(feats, exclude, a)
            best = current if best is None else _keep_lower(best, current)
        best.names = names
        return identity_feats, best

    def _score(self, feats: np.ndarray, exclude: np.ndarray | None, aug: int) -> Matches:
        raw, idx = self.index.search(feats, self.k + 1, exclude=exclude)
        if self.index.metric == "ip":
            similarity = raw[:, 0].astype(np.float64)
            dist = cosine_to_distance(raw)
        else:
            similarity = np.full(raw.shape[0], np.nan)
            dist = raw
        return Matches(
            score=relative_nn_score(dist),
            distance=dist[:, 0].astype(np.float64),
            similarity=similarity,
            train_index=idx[:, 0],
            augmentation=np.full(raw.shape[0], aug, dtype=np.int16),
            names=[],
        )


def _keep_lower(a: Matches, b: Matches) -> Matches:
    take_b = b.score < a.score
    for name in ("score", "distance", "similarity", "train_index", "augmentation"):
        getattr(a, name)[take_b] = getattr(b, name)[take_b]
    return a
