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
# Matches' per-image arrays (the rest of a Matches is per batch, or optional)
ROW_FIELDS = ("score", "distance", "similarity", "train_index", "augmentation")


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
        align_start, align_train: ``(M,)`` the variant (index into ``names``) with the best
            score among the shift and geometric families, and its training match: where
            ``"refine"`` starts (``ganaudit.search.align``); None when those were not searched.
    """

    score: np.ndarray
    distance: np.ndarray
    similarity: np.ndarray
    train_index: np.ndarray
    augmentation: np.ndarray
    names: list[str]
    family_score: np.ndarray | None = None
    families: list[str] | None = None
    align_start: np.ndarray | None = None
    align_train: np.ndarray | None = None

    @staticmethod
    def concatenate(parts: list["Matches"]) -> "Matches":
        joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ROW_FIELDS}
        optional = {}
        for name in ("family_score", "align_start", "align_train"):
            if all(getattr(p, name) is not None for p in parts):
                optional[name] = np.concatenate([getattr(p, name) for p in parts])
        return Matches(**joined, names=parts[0].names, families=parts[0].families, **optional)


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
        train_features: the ``(N, D')`` training copy features the index holds (a memory map
            is fine: only the rows an image is aligned with are read); needed by ``"refine"``.
    """

    def __init__(self, index: SearchIndex, copy_embedder: Embedder, augmentations: tuple[str, ...], copy_k: int,
                 embedder: Embedder | None = None, rank_by: str = "score", train_features: np.ndarray | None = None):
        if rank_by not in ("score", "similarity", "distance"):
            raise ValueError(f"rank_by must be score, similarity or distance, got {rank_by!r}")
        self.rank_by = rank_by
        self.index = index
        self.copy_embedder = copy_embedder
        self.embedder = embedder if embedder is not None else copy_embedder
        self.augmentations = augmentations
        self.k = min(copy_k, index.ntotal - 2)
        self.train_features = train_features
        self.refines = "refine" in augmentations
        self.refined_images = 0  # images aligned by ``refine`` so far (each embedded once more)
        if self.refines and train_features is None:
            raise ValueError("the refine augmentation needs the training copy features (train_features)")
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
        matches = self.search_embedded(names, variant_feats, exclude)
        if self.refines:
            matches = self.refine(matches, lambda rows: images[rows], exclude)
        return features, variant_feats[0], matches

    def search_embedded(self, names: list[str], variant_feats: list[np.ndarray],
                        exclude: np.ndarray | None = None) -> Matches:
        """The search half of a call: ``Matches`` of a batch whose variants are already embedded.

        Args:
            names, variant_feats: what :func:`embed_variants` returns (one ``(B, D')`` array
                per variant, the identity first), wherever it ran.
            exclude: as for ``__call__``.
        """
        best, pending, family_best, start = None, [], {}, {}
        for j, feats in enumerate(variant_feats):
            pending.append(feats)
            if len(pending) * len(feats) >= SEARCH_GROUP:
                best = self._search_group(pending, exclude, names, j + 1 - len(pending), best, family_best, start)
                pending = []
        if pending:
            best = self._search_group(pending, exclude, names, len(variant_feats) - len(pending), best,
                                      family_best, start)
        best.names = list(names) + (["refined"] if self.refines else [])
        best.families = list(family_best)
        best.family_score = np.stack([family_best[f] for f in best.families], axis=1)
        if start:
            best.align_start, best.align_train = start["variant"], start["train"]
        return best

    def refine(self, matches: Matches, images_of, exclude: np.ndarray | None = None) -> Matches:
        """``matches`` with each image's best shift or geometric variant aligned finely to its
        training match and searched again (``ganaudit.search.align``), where the image's best
        shift, geometric or hue score is below ``align.REFINE_BELOW``; the result counts in
        the geometric family (the shift family when no geometric variant ran) and is named
        ``"refined"``.

        Args:
            matches: one batch's matches from :meth:`search_embedded`.
            images_of: ``rows -> (len(rows), 3, H, W)`` the batch's images at those rows (drawn
                again on the driver when the search ran on a cluster).
            exclude: as for ``__call__``.
        """
        from ganaudit.search import align

        if matches.align_start is None or matches.families is None:
            if not self._warned:
                self._warned = True
                log.warning("refine: no shift or geometric variant was searched to start from; nothing is refined")
            return matches
        fam = "geometric" if "geometric" in matches.families else "shift"
        column = matches.families.index(fam)
        # the colour family counts for the screen too: a hue-shifted crop's best geometric
        # variant can score far worse than its best hue variant, which refinement combines
        start_score = matches.family_score[:, [matches.families.index(f) for f in ("shift", "geometric", "colour")
                                               if f in matches.families]].min(axis=1)
        rows = np.flatnonzero(start_score < align.REFINE_BELOW)
        if len(rows) == 0:
            return matches
        images = images_of(rows)
        h, w = align.refine_size(tuple(images.shape[-2:]), self.copy_embedder.spec, align.VARIANT_SIDE)  # variants' size
        start = np.array([align.variant_params(matches.names[v], h, w) for v in matches.align_start[rows]])
        order = np.argsort(matches.align_train[rows], kind="stable")  # a memory map reads rows in order
        targets = np.empty((len(rows), self.train_features.shape[1]), np.float32)
        targets[order] = self.train_features[matches.align_train[rows][order]]
        params, _ = align.refine(self.copy_embedder, images, start, targets)
        self.refined_images += len(rows)
        feats = align.embed_transformed(self.copy_embedder, images, params)
        raw, idx = self.index.search(feats, self.k + 1, exclude=None if exclude is None else exclude[rows])
        current = matches_from_search(raw, idx, self.index.metric, len(matches.names) - 1)
        matches.family_score[rows, column] = np.minimum(matches.family_score[rows, column], current.score)
        held = _keep_best(Matches(**{f: getattr(matches, f)[rows] for f in ROW_FIELDS}, names=[]), current,
                          self.rank_by)
        for f in ROW_FIELDS:
            getattr(matches, f)[rows] = getattr(held, f)
        return matches

    def _search_group(self, group: list[np.ndarray], exclude: np.ndarray | None, names: list[str], first: int,
                      best: Matches | None, family_best: dict[str, np.ndarray], start: dict) -> Matches:
        """Search several variants' features in one call (``names[first:]``); fold each into
        ``best``, into its family's best score and, for shift and geometric variants, into
        ``start`` (where ``refine`` begins: ``score``, ``variant``, ``train`` per image)."""
        n = len(group[0])
        excluded = None if exclude is None else np.tile(exclude, len(group))
        raw, idx = self.index.search(np.concatenate(group), self.k + 1, exclude=excluded)
        for j in range(len(group)):
            rows = slice(j * n, (j + 1) * n)
            current = matches_from_search(raw[rows], idx[rows], self.index.metric, first + j)
            fam = family(names[first + j])
            held = family_best.get(fam)
            family_best[fam] = current.score.copy() if held is None else np.minimum(held, current.score)
            if fam in ("shift", "geometric"):
                if not start:
                    start.update(score=current.score.copy(), variant=current.augmentation.copy(),
                                 train=current.train_index.copy())
                else:
                    better = current.score < start["score"]
                    for key, value in (("score", current.score), ("variant", current.augmentation),
                                       ("train", current.train_index)):
                        start[key][better] = value[better]
            best = current if best is None else _keep_best(best, current, self.rank_by)
        return best


def embed_variants(images: torch.Tensor, augmentations: tuple[str, ...], copy_embedder: Embedder,
                   embedder: Embedder | None = None, features: bool = True
                   ) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """The embedding half of a copy search: every test-time variant of a batch, embedded.

    The variants other than the identity are made at about ``align.VARIANT_SIDE`` times the
    copy embedder's input side when the images are larger (``align.reduced``): the
    descriptor sees no more, and a variant of a 1024 px image made at full size has about 73
    times the pixels of one made at 120 px. The identity is embedded at full size, as the training
    images are, so an exact copy still matches its source exactly.

    Returns:
        ``(names, variant features, features)``: the variant names (the identity first), one
        ``(B, D')`` float32 array of copy features per variant, and the ``(B, D)`` features
        under the audit's ``embedder`` (the identity variant's when it is the copy embedder).
    """
    from ganaudit.search.align import VARIANT_SIDE, reduced

    work = reduced(copy_embedder, images, VARIANT_SIDE, "bicubic")
    names, feats = [], []
    for name, view in variants(work, augmentations):
        names.append(name)
        feats.append(copy_embedder.embed(images if name == "identity" else view))
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
    for name in ROW_FIELDS:
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
