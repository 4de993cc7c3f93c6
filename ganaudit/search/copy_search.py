"""Searching image batches against the training index, under test-time augmentations.

One pass over a batch embeds every variant with the copy embedder, finds each variant's k+1
nearest training images, scores it, and keeps per image the variant with the most
suspicious score. The batch's features under the audit's embedder are returned too (the
identity variant's, when it is the copy embedder), so the caller never embeds twice.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ganaudit.search.augment import family, variants
from ganaudit.embedders.base import Embedder
from ganaudit.progress import progress_bar
from ganaudit.search.index import SearchIndex
from ganaudit.metrics.copy_stats import cosine_to_distance, relative_nn_score

log = logging.getLogger(__name__)

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
        family_score: ``(M, F)`` the best score within each augmentation family (the
            ``families``, ``ganaudit.search.augment.FAMILIES``), float64; None when unknown.
        families: the families searched, in ``family_score``'s column order.
    """

    score: np.ndarray
    distance: np.ndarray
    similarity: np.ndarray
    train_index: np.ndarray
    augmentation: np.ndarray
    names: list[str]
    family_score: np.ndarray | None = None
    families: list[str] | None = None

    @staticmethod
    def concatenate(parts: list["Matches"]) -> "Matches":
        fields = ("score", "distance", "similarity", "train_index", "augmentation")
        joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
        per_family = None
        if all(p.family_score is not None for p in parts):
            per_family = np.concatenate([p.family_score for p in parts])
        return Matches(**joined, names=parts[0].names, family_score=per_family, families=parts[0].families)


class CopySearcher:
    """Scores images against a training index: ``(features, copy_features, matches) = searcher(images)``.

    Args:
        index: the training set's copy features.
        copy_embedder: what made them; each variant of a batch is embedded with it.
        augmentations: test-time augmentation families (``ganaudit.search.augment``).
        copy_k: neighbours the nearest distance is compared with (``d1 / mean(d2..d_{k+1})``).
        embedder: the audit's embedder, when it is not ``copy_embedder``.
        rank_by: what picks an image's best variant: the lowest ``"score"`` (calibrated
            flags), the highest ``"similarity"`` or the lowest ``"distance"`` (absolute
            thresholds on those).
    """

    def __init__(self, index: SearchIndex, copy_embedder: Embedder, augmentations: tuple[str, ...], copy_k: int,
                 embedder: Embedder | None = None, rank_by: str = "score"):
        if rank_by not in ("score", "similarity", "distance"):
            raise ValueError(f"rank_by must be score, similarity or distance, got {rank_by!r}")
        self.rank_by = rank_by
        self.index = index
        self.copy_embedder = copy_embedder
        self.embedder = embedder if embedder is not None else copy_embedder
        self.augmentations = augmentations
        self.k = min(copy_k, index.ntotal - 2)
        self._warned = False
        if self.k < 1:
            raise ValueError("the training set needs at least 3 images")

    def __call__(self, images: torch.Tensor, exclude: np.ndarray | None = None,
                 features: bool = True) -> tuple[np.ndarray, np.ndarray, Matches]:
        """Embed and search one batch.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1].
            exclude: optional ``(B,)`` training indices the images themselves are (leave-one-out
                calibration on the training set).
            features: also embed the batch with the audit's embedder when it is not the copy
                embedder (False: those features are not needed, and ``(B, 0)`` is returned).

        Returns:
            ``(features (B, D) of the audit's embedder, copy features (B, D') of the identity
            variant, Matches)``, features float32.
        """
        names, variant_feats, features = embed_variants(images, self.augmentations, self.copy_embedder,
                                                        self.embedder, features=features)
        if "zoom" in self.augmentations and not any(n.startswith("zoom") for n in names) and not self._warned:
            self._warned = True
            log.warning("images of %dx%d px are too small to zoom out; copy search skips the zoom variants",
                        *images.shape[-2:])
        return features, variant_feats[0], self.search_embedded(names, variant_feats, exclude)

    def search_embedded(self, names: list[str], variant_feats: list[np.ndarray],
                        exclude: np.ndarray | None = None) -> Matches:
        """The search half of a call: ``Matches`` of a batch whose variants are already embedded.

        Args:
            names, variant_feats: what :func:`embed_variants` returns (one ``(B, D')`` array
                per variant, the identity first), wherever it ran.
            exclude: as for ``__call__``.
        """
        best, pending, family_best = None, [], {}
        for j, feats in enumerate(variant_feats):
            pending.append(feats)
            if len(pending) * len(feats) >= SEARCH_GROUP:
                best = self._search_group(pending, exclude, names, j + 1 - len(pending), best, family_best)
                pending = []
        if pending:
            best = self._search_group(pending, exclude, names, len(variant_feats) - len(pending), best,
                                      family_best)
        best.names = list(names)
        best.families = list(family_best)
        best.family_score = np.stack([family_best[f] for f in best.families], axis=1)
        return best

    def _search_group(self, group: list[np.ndarray], exclude: np.ndarray | None, names: list[str], first: int,
                      best: Matches | None, family_best: dict[str, np.ndarray]) -> Matches:
        """Search several variants' features in one call (``names[first:]``); fold each into
        ``best`` and into its family's best score."""
        n = len(group[0])
        excluded = None if exclude is None else np.tile(exclude, len(group))
        raw, idx = self.index.search(np.concatenate(group), self.k + 1, exclude=excluded)
        for j in range(len(group)):
            rows = slice(j * n, (j + 1) * n)
            current = matches_from_search(raw[rows], idx[rows], self.index.metric, first + j)
            fam = family(names[first + j])
            held = family_best.get(fam)
            family_best[fam] = current.score.copy() if held is None else np.minimum(held, current.score)
            best = current if best is None else _keep_best(best, current, self.rank_by)
        return best


def embed_variants(images: torch.Tensor, augmentations: tuple[str, ...], copy_embedder: Embedder,
                   embedder: Embedder | None = None, features: bool = True
                   ) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """The embedding half of a copy search: every test-time variant of a batch, embedded.

    Returns:
        ``(names, variant features, features)``: the variant names (the identity first), one
        ``(B, D')`` float32 array of copy features per variant, and the ``(B, D)`` features
        under the audit's ``embedder`` (the identity variant's when it is the copy embedder).
    """
    names, feats = [], []
    for name, view in variants(images, augmentations):
        names.append(name)
        feats.append(copy_embedder.embed(view))
    if embedder is None or embedder is copy_embedder:
        out = feats[0]
    else:  # features=False: the caller needs no features under the audit's embedder
        out = embedder.embed(images) if features else np.empty((len(images), 0), np.float32)
    return names, feats, out


def matches_from_search(raw: np.ndarray, idx: np.ndarray, metric: str, augmentation: int = 0) -> Matches:
    """Score each query from its ``k + 1`` nearest training images (``SearchIndex.search`` output).

    Args:
        raw: ``(M, k + 1)`` distances (``"l2"``) or cosine similarities (``"ip"``), best first.
        idx: ``(M, k + 1)`` training indices.
        metric: the index's metric.
        augmentation: the variant these queries are, recorded in every row.
    """
    if metric == "ip":
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
        augmentation=np.full(raw.shape[0], augmentation, dtype=np.int16),
        names=[],
    )


def _keep_best(a: Matches, b: Matches, rank_by: str) -> Matches:
    """``a`` with the rows where ``b`` is better by ``rank_by`` replaced (ties keep ``a``)."""
    take_b = b.similarity > a.similarity if rank_by == "similarity" else getattr(b, rank_by) < getattr(a, rank_by)
    for name in ("score", "distance", "similarity", "train_index", "augmentation"):
        getattr(a, name)[take_b] = getattr(b, name)[take_b]
    return a


@dataclass
class SearchedSet:
    """Everything searching a whole image source leaves behind (its images are not kept).

    Attributes:
        features: ``(N, D)`` float32 features under the audit's embedder.
        copy_features: ``(≤ keep_copy_features, D')`` copy features of the first images.
        matches: each image's best training match.
        class_labels: ``(N,)`` int64 labels (conditional generators, labelled folders), or None.
        contrast: ``(N,)`` float32 RMS contrast of each image (``ganaudit.search.hygiene``).
    """

    features: np.ndarray
    copy_features: np.ndarray
    matches: Matches
    class_labels: np.ndarray | None
    contrast: np.ndarray | None = None


def search_source(source, searcher: CopySearcher, batch_size: int, label: str, progress: bool | None,
                  exclude_of: np.ndarray | None = None, keep_copy_features: int = 0,
                  features: bool = True) -> SearchedSet:
    """Embed and search every batch of an image source (``ganaudit.sources.ImageSource``).

    Args:
        source: what to search: generated samples, a holdout set, a subset of the training set.
        searcher: the copy searcher.
        batch_size: images per batch.
        label, progress: the progress bar's label; whether to show it (None: on a terminal).
        exclude_of: ``(N,)`` training index each image of ``source`` itself is (leave-one-out).
        keep_copy_features: also keep the copy features of the first this many images.
        features: keep the audit embedder's features (False: ``features`` is ``(N, 0)`` and an
            audit embedder other than the copy embedder is not run at all).
    """
    from ganaudit.search.hygiene import rms_contrast

    feats, copy_feats, parts, labels, contrast = [], [], [], [], []
    kept = 0
    with progress_bar(len(source), label, progress) as bar:
        for indices, batch in source.batches(batch_size):
            exclude = None if exclude_of is None else exclude_of[indices]
            f, c, m = searcher(batch, exclude=exclude, features=features)
            feats.append(f)
            if kept < keep_copy_features:
                copy_feats.append(c[: keep_copy_features - kept])
                kept += len(copy_feats[-1])
            parts.append(m)
            contrast.append(rms_contrast(batch))
            labels.append(source.class_labels(indices))
            bar.update(len(indices))
    has_labels = all(lab is not None for lab in labels)
    copy = np.concatenate(copy_feats) if copy_feats else np.empty((0, searcher.copy_embedder.spec.dim), np.float32)
    return SearchedSet(np.concatenate(feats), copy, Matches.concatenate(parts),
                       np.concatenate(labels) if has_labels else None, np.concatenate(contrast))
