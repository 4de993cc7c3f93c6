"""Reference hygiene: findings about the data that calibration must not absorb.

Three things real image collections contain, found before calibrating:

- **Reference images that duplicate training images.** Real splits contain them (Barz &
  Denzler 2020 found training near-duplicates for 3.3% of CIFAR-10's test images). When more
  than α of the reference (holdout, or leave-one-out training images) are such duplicates,
  the reference's α-quantile falls to about zero and only exact copies get flagged. A
  reference image is a near-duplicate when its relative score ``d1 / mean(d2..d(k+1))`` —
  searched exactly as generated samples are, under the same test-time augmentations — is
  below ``DUPLICATE_SCORE`` (its nearest training image is more than 20 times closer than the
  mean of its next ``k``), or, for a copy embedder with a published copy threshold (SSCD's
  cosine 0.75), when its similarity reaches that threshold. The criterion is fixed: it uses
  neither α nor any quantile of the reference it protects, so a contaminated reference
  cannot move it. The score is a ratio of distances, so the criterion means the same in any
  copy descriptor. The score cannot see a copy with more than ``k`` identical twins (all its
  neighbours are then equally near), so for unit-norm descriptors a distance below
  ``EXACT_DISTANCE`` = 0.01 (cosine 0.99995: the same image up to float rounding) is a
  near-duplicate too. Near-duplicates are excluded from the reference and reported as pairs.
- **Duplicate groups inside the training set.** Carlini et al. (2023) found that duplicated
  training images are the ones generators reproduce most. Each training image is searched
  against the others (leave-one-out, no augmentation, in blocks: never an N×N matrix) and
  the same criterion links it to the run of its nearest neighbours that pass it
  (``review.evidence.duplicate_run``); linked images form groups (union-find).
- **Low-information images.** A flat page, an empty sky or a black frame matches any other
  such image within re-encoding noise, in any descriptor: calling one a copy says nothing
  about memorisation. An image is low-information when its RMS contrast (the standard
  deviation of its luminance, on a 32×32 antialiased reduction in [0, 1]) is below
  ``LOW_INFORMATION_CONTRAST`` = 0.01, i.e. its pixels spread over about ±2.5 of 255 grey
  levels, the size of 8-bit quantisation and sensor noise. Such generated samples are never
  flagged (the ones that would have been are counted), such reference images are left out
  of the reference (calibration is then over informative images only, which is what it is
  applied to), and such training images are left out of duplicate groups.

What the exclusions can cost: excluding ``r`` of ``n`` reference images raises the
threshold by at most ``r`` ranks, so even if every excluded image were an ordinary image the
false-flag rate is at most ``alpha + r / (n + 1)``; the calibration records that bound
(``alpha_bound_if_excluded_were_clean``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec
from ganaudit.features import take_rows

DUPLICATE_SCORE = 0.05
EXACT_DISTANCE = 0.01  # unit-norm descriptors this close (cosine >= 0.99995) are the same image up to rounding
LOW_INFORMATION_CONTRAST = 0.01
CONTRAST_SIZE = (32, 32)
MAX_PAIRS = 50  # near-duplicate pairs listed in the result (all are counted)
MAX_GROUPS = 50  # training duplicate groups listed
MAX_RUN = 20  # duplicates looked for per training image
SEARCH_BLOCK = 4096  # training images searched per call
# Training images searched for duplicates at most (a seeded subset past it): each is searched
# against the whole set, so the cost stays linear in the training set's size (N × this, never N × N).
MAX_DUPLICATE_QUERIES = 20_000

CONTRAST_SPEC = EmbedderSpec(name="rms-contrast", dim=1, input_size=CONTRAST_SIZE)


class ContrastEmbedder(Embedder):
    """RMS contrast of each image: one number, cached like any feature (``embed_image_set``)."""

    def __init__(self, device: torch.device | str = "cpu"):
        super().__init__(CONTRAST_SPEC, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        luminance = x.float().mean(dim=1).flatten(1)
        return luminance.std(dim=1, unbiased=False)[:, None]


def rms_contrast(images: torch.Tensor) -> np.ndarray:
    """``(B,)`` float32 RMS contrast of ``(B, 3, H, W)`` [0, 1] images (module docstring)."""
    return ContrastEmbedder(images.device).embed(images)[:, 0]


def low_information(contrast: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: images whose RMS contrast is below ``LOW_INFORMATION_CONTRAST``."""
    return np.asarray(contrast, dtype=np.float64) < LOW_INFORMATION_CONTRAST


def criterion(published_similarity: float | None) -> dict:
    """The criteria, as the result records them."""
    text = (f"near-duplicate: relative score d1 / mean(d2..d(k+1)) below {DUPLICATE_SCORE:g}"
            + (f", or cosine similarity at least the copy embedder's published {published_similarity:g}"
               if published_similarity is not None else "")
            + f"; low-information: RMS contrast of the 32x32 luminance below {LOW_INFORMATION_CONTRAST:g}")
    return {"duplicate_score_below": DUPLICATE_SCORE, "exact_distance_below": EXACT_DISTANCE, "duplicate_similarity_at_least": published_similarity,
            "low_information_contrast_below": LOW_INFORMATION_CONTRAST, "text": text}


def near_duplicates(score: np.ndarray, similarity: np.ndarray, published_similarity: float | None,
                    distance: np.ndarray | None = None) -> np.ndarray:
    """``(M,)`` bool: matches that are near-duplicates of their training image (module docstring).

    ``distance`` is given for unit-norm (inner-product) descriptors only."""
    dup = np.asarray(score) < DUPLICATE_SCORE
    if distance is not None:
        dup |= np.asarray(distance) < EXACT_DISTANCE
    if published_similarity is not None:
        sim = np.asarray(similarity, dtype=np.float64)
        dup |= np.nan_to_num(sim, nan=-np.inf) >= published_similarity
    return dup


@dataclass
class DuplicateGroups:
    """Duplicate groups of the training set: each a sorted list of training indices, largest first."""

    groups: list[list[int]]
    n_searched: int = 0  # training images searched for their duplicates (all, up to MAX_DUPLICATE_QUERIES)

    @property
    def n_images(self) -> int:
        return sum(len(g) for g in self.groups)


def train_duplicate_groups(index, train_copy_feats: np.ndarray, informative: np.ndarray, copy_k: int,
                           published_similarity: float | None = None, seed: int = 0,
                           max_queries: int = MAX_DUPLICATE_QUERIES) -> DuplicateGroups:
    """Groups of training images linked by the near-duplicate criterion (module docstring).

    Args:
        index: the audit's training index (``metric`` ``"l2"`` or ``"ip"``), built from
            ``train_copy_feats`` ``(N, D)``.
        informative: ``(N,)`` bool, False for low-information images (never grouped).
        copy_k: the neighbours the relative score runs over.
        published_similarity: the copy embedder's published cosine threshold, if any.
        seed, max_queries: past ``max_queries`` training images, a seeded subset of that many
            is searched (each against the whole set); groups are those their searches link.
    """
    from ganaudit.metrics.copy_stats import cosine_to_distance
    from ganaudit.review.evidence import duplicate_run

    n = int(index.ntotal)
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if n < 3:
        return DuplicateGroups([])
    k = max(1, min(copy_k, n - 2))
    n_search = min(MAX_RUN + k, n - 1)
    queries = (np.arange(n) if n <= max_queries
               else np.sort(np.random.default_rng([seed, 17]).choice(n, max_queries, replace=False)))
    for start in range(0, len(queries), SEARCH_BLOCK):
        rows = queries[start:start + SEARCH_BLOCK]
        raw, idx = index.search(take_rows(train_copy_feats, rows), n_search, exclude=rows)
        dist = cosine_to_distance(raw) if index.metric == "ip" else raw.astype(np.float64)
        sims = raw if index.metric == "ip" else None
        with np.errstate(invalid="ignore", divide="ignore"):
            rest = np.nanmean(np.where(np.isfinite(dist[:, 1:k + 1]), dist[:, 1:k + 1], np.nan), axis=1)
            first = np.where(rest > 0, dist[:, 0] / rest, 0.0)
        unit = index.metric == "ip"
        candidate = first < DUPLICATE_SCORE
        if unit:
            candidate |= dist[:, 0] < EXACT_DISTANCE
        if published_similarity is not None and sims is not None:
            candidate |= sims[:, 0] >= published_similarity
        for r in np.flatnonzero(candidate & informative[rows]):
            valid = np.isfinite(dist[r])
            d, j = dist[r][valid], idx[r][valid]
            run = duplicate_run(d, None, "score", DUPLICATE_SCORE, k, limit=MAX_RUN)
            if unit:  # identical twins, however many
                run = max(run, duplicate_run(d, None, "distance", EXACT_DISTANCE, k, limit=MAX_RUN))
            if published_similarity is not None and sims is not None:
                run = max(run, duplicate_run(d, sims[r][valid], "similarity", published_similarity, k, limit=MAX_RUN))
            for other in j[:run]:
                if informative[other]:
                    a, b = find(int(rows[r])), find(int(other))
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    linked = np.flatnonzero(parent != np.arange(n))  # only these and their roots can be in a group
    members = np.unique(np.concatenate([linked, [find(int(i)) for i in linked]])).astype(np.int64)
    roots = np.array([find(int(i)) for i in members], dtype=np.int64)
    order = np.lexsort((members, roots))
    members, roots = members[order], roots[order]
    starts = np.flatnonzero(np.r_[True, roots[1:] != roots[:-1]]) if len(roots) else np.array([], int)
    groups = [g.tolist() for g in np.split(members, starts[1:])] if len(roots) else []
    groups = [g for g in groups if len(g) > 1]
    groups.sort(key=lambda g: (-len(g), g[0]))
    return DuplicateGroups(groups, n_searched=len(queries))


def reference_pairs(reference, keep_dup: np.ndarray, describe_reference, describe_train) -> list[dict]:
    """The excluded near-duplicate pairs, most copy-like first, at most ``MAX_PAIRS``."""
    m = reference.matches
    order = np.flatnonzero(keep_dup)
    order = order[np.argsort(m.score[order], kind="stable")][:MAX_PAIRS]
    pairs = []
    for i in order:
        kind, image = reference.origin[i], int(reference.image_index[i])
        t = int(m.train_index[i])
        sim = float(m.similarity[i])
        pairs.append({"reference": str(kind), "reference_index": image, "reference_path": describe_reference(kind, image),
                      "train_index": t, "train_path": describe_train(t), "score": float(m.score[i]),
                      "similarity": None if np.isnan(sim) else sim, "augmentation": m.names[int(m.augmentation[i])]})
    return pairs
