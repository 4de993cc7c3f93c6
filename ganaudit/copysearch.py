"""Searching image batches against the training index, under test-time augmentations.

One pass over a batch embeds every variant with the copy embedder, finds each variant's k+1
nearest training images, scores it, and keeps per image the variant with the most
suspicious score. The batch's features under the audit's embedder are returned too (the
identity variant's, when it is the copy embedder), so the caller never embeds twice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ganaudit.augment import variants
from ganaudit.embedders.base import Embedder
from ganaudit.index import FlatIndex
from ganaudit.metrics.copy_stats import cosine_to_distance, relative_nn_score

# Variants are searched together until this many queries have gathered (fewer, larger
# searches; the features of one group are at most SEARCH_GROUP x D floats).
SEARCH_GROUP = 4096


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
    """Scores images against a training index: ``(features, copy_features, matches) = searcher(images)``.

    Args:
        index: the training set's copy features.
        copy_embedder: what made them; each variant of a batch is embedded with it.
        augmentations: test-time augmentation families (``ganaudit.augment``).
        nearest_k: neighbours the nearest distance is compared with.
        embedder: the audit's embedder, when it is not ``copy_embedder``.
        rank_by: what picks an image's best variant: the lowest ``"score"`` (calibrated
            flags), the highest ``"similarity"`` or the lowest ``"distance"`` (absolute
            thresholds on those).
    """

    def __init__(self, index: FlatIndex, copy_embedder: Embedder, augmentations: tuple[str, ...], nearest_k: int,
                 embedder: Embedder | None = None, rank_by: str = "score"):
        if rank_by not in ("score", "similarity", "distance"):
            raise ValueError(f"rank_by must be score, similarity or distance, got {rank_by!r}")
        self.rank_by = rank_by
        self.index = index
        self.copy_embedder = copy_embedder
        self.embedder = embedder if embedder is not None else copy_embedder
        self.augmentations = augmentations
        self.k = min(nearest_k, index.ntotal - 2)
        if self.k < 1:
            raise ValueError("the training set needs at least 3 images")

    def __call__(self, images: torch.Tensor, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, Matches]:
        """Embed and search one batch.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1].
            exclude: optional ``(B,)`` training indices the images themselves are (leave-one-out
                calibration on the training set).

        Returns:
            ``(features (B, D) of the audit's embedder, copy features (B, D') of the identity
            variant, Matches)``, features float32.
        """
        best, copy_feats, names, pending = None, None, [], []
        for name, view in variants(images, self.augmentations):
            feats = self.copy_embedder.embed(view)
            if copy_feats is None:
                copy_feats = feats
            names.append(name)
            pending.append(feats)
            if len(pending) * len(feats) >= SEARCH_GROUP:
                best = self._search_group(pending, exclude, len(names) - len(pending), best)
                pending = []
        if pending:
            best = self._search_group(pending, exclude, len(names) - len(pending), best)
        best.names = names
        features = copy_feats if self.embedder is self.copy_embedder else self.embedder.embed(images)
        return features, copy_feats, best

    def _search_group(self, group: list[np.ndarray], exclude: np.ndarray | None, first: int,
                      best: Matches | None) -> Matches:
        """Search several variants' features in one call; fold each into ``best``."""
        n = len(group[0])
        excluded = None if exclude is None else np.tile(exclude, len(group))
        raw, idx = self.index.search(np.concatenate(group), self.k + 1, exclude=excluded)
        for j in range(len(group)):
            rows = slice(j * n, (j + 1) * n)
            current = self._score(raw[rows], idx[rows], first + j)
            best = current if best is None else _keep_best(best, current, self.rank_by)
        return best

    def _score(self, raw: np.ndarray, idx: np.ndarray, aug: int) -> Matches:
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


def _keep_best(a: Matches, b: Matches, rank_by: str) -> Matches:
    """``a`` with the rows where ``b`` is better by ``rank_by`` replaced (ties keep ``a``)."""
    take_b = b.similarity > a.similarity if rank_by == "similarity" else getattr(b, rank_by) < getattr(a, rank_by)
    for name in ("score", "distance", "similarity", "train_index", "augmentation"):
        getattr(a, name)[take_b] = getattr(b, name)[take_b]
    return a
