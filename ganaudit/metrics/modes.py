"""Modes of the training distribution and how generated samples spread over them.

Modes come from class labels when the training set has them, otherwise from k-means on the
training features (:func:`kmeans_modes`). Generated samples get a mode by a k-NN vote among
labelled training samples (:func:`knn_vote_labels`) or by their nearest centroid
(:func:`ganaudit.metrics.clustering.nearest_centroid`). :func:`mode_coverage` then compares the two distributions.

Audits count modes from *confident* assignments only (:func:`confident_modes`): a sample whose
mode the features cannot tell (it lies nearly as near another mode) is unassigned, and the covered and missing modes are counted without it. The rule and
its calibration are in docs/metrics.md ("Mode counts").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ganaudit.features import as_features, check_count, check_same_dim, take_rows
from ganaudit.search.index import grouped_knn, knn
from ganaudit.metrics.clustering import kmeans_centroids, nearest_centroid


DEFAULT_KL_SMOOTHING = 1e-6
# Best of a few k-means++ initialisations: FAISS' own random init often merges two blobs.
KMEANS_N_INIT = 3
# Automatic choice of K: candidates and the size of the subsample the choice is made on.
DEFAULT_MODE_RANGE = (2, 20)
SELECTION_SAMPLE = 5000
SILHOUETTE_SAMPLE = 2000
# Confident assignment (see confident_modes): the calibration's safety factor on the coverage
# rule, the reference's size cap and the margin candidates tried.
CONFUSION_SAFETY = 0.5
MARGIN_TAIL = 0.01
REFERENCE_MAX = 5000
MARGIN_CANDIDATES = 199


def _as_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def knn_vote_labels(
    train_features: np.ndarray, train_labels: np.ndarray, gen_features: np.ndarray, k: int = 5
) -> np.ndarray:
    """Label each generated sample by a majority vote of its k nearest training samples.

    Ties go to the tied label that occurs nearest (so the nearest neighbour's label wins
    whenever it is among the tied ones).

    Args:
        train_features: ``(N, D)`` float32 training features.
        train_labels: ``(N,)`` integer labels of the training samples.
        gen_features: ``(M, D)`` float32 generated features.
        k: voters per generated sample, ``1 <= k <= N``.

    Returns:
        ``(M,)`` int64 labels taken from ``train_labels``.
    """
    train = as_features(train_features, "train_features")
    gen = as_features(gen_features, "gen_features")
    check_same_dim(train_features=train, gen_features=gen)
    labels = _as_labels(train_labels, "train_labels")
    if labels.shape[0] != train.shape[0]:
        raise ValueError(f"{labels.shape[0]} train_labels for {train.shape[0]} train_features")
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"k must be in [1, {train.shape[0]}] (the training set size), got {k}")
    _, idx = knn(train, gen, k=k)
    votes = labels[idx]  # (M, k), nearest first
    # For each position, how many of the k voters share its label: (M, k, k) stays small.
    counts = (votes[:, :, None] == votes[:, None, :]).sum(axis=2)
    winner = np.argmax(counts, axis=1)  # first (nearest) position among the maxima
    return votes[np.arange(votes.shape[0]), winner]


def _fit_kmeans(x: np.ndarray, n_modes: int, seed: int) -> np.ndarray:
    return kmeans_centroids(x, n_modes, seed=seed, init="k-means++", n_init=KMEANS_N_INIT)


def select_n_modes(
    train_features: np.ndarray, mode_range: tuple[int, int] = DEFAULT_MODE_RANGE, seed: int = 0
) -> int:
    """Choose the number of k-means modes by the best silhouette score.

    For each K in ``mode_range`` (inclusive), k-means is fitted on a random subsample of at
    most 5,000 rows and its silhouette computed on at most 2,000 of them; the K with the
    highest silhouette wins (the smallest K on ties). Silhouette is undefined for one
    cluster, so the answer is at least 2.

    Args:
        train_features: ``(N, D)`` float32 features, ``N >= 3``.
        mode_range: ``(low, high)`` candidate K, ``2 <= low <= high``.
        seed: seed of the subsamples and of k-means.

    Returns:
        The chosen K.
    """
    from sklearn.metrics import silhouette_score

    x = as_features(train_features, "train_features", min_rows=3)
    low, high = mode_range
    if not 2 <= low <= high:
        raise ValueError(f"mode_range must satisfy 2 <= low <= high, got {mode_range}")
    rng = np.random.default_rng(seed)
    if x.shape[0] > SELECTION_SAMPLE:
        x = x[np.sort(rng.choice(x.shape[0], SELECTION_SAMPLE, replace=False))]
    high = min(high, x.shape[0] - 1)
    best_k, best_score = low, -np.inf
    for k in range(low, high + 1):
        labels = nearest_centroid(x, _fit_kmeans(x, k, seed))
        if np.unique(labels).size < 2:
            continue
        score = silhouette_score(
            x, labels, sample_size=min(SILHOUETTE_SAMPLE, x.shape[0]), random_state=seed
        )
        if score > best_score:
            best_k, best_score = k, score
    return best_k


def kmeans_modes(
    train_features: np.ndarray,
    n_modes: int | None = None,
    seed: int = 0,
    mode_range: tuple[int, int] = DEFAULT_MODE_RANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster training features into modes with FAISS k-means.

    Args:
        train_features: ``(N, D)`` float32 training features.
        n_modes: number of modes K, ``1 <= K <= N``; None chooses it with
            :func:`select_n_modes` over ``mode_range``.
        seed: seed of k-means (and of the choice of K).
        mode_range: candidate K when ``n_modes`` is None.

    Returns:
        ``(labels, centroids)``: ``(N,)`` int64 mode of each training sample and
        ``(K, D)`` float32 centroids.
    """
    x = as_features(train_features, "train_features")
    if n_modes is None:
        n_modes = select_n_modes(x, mode_range, seed)
    if not 1 <= n_modes <= x.shape[0]:
        raise ValueError(f"n_modes must be in [1, {x.shape[0]}] (the sample count), got {n_modes}")
    centroids = _fit_kmeans(x, int(n_modes), seed)
    return nearest_centroid(x, centroids), centroids


def _smoothed(p: np.ndarray, eps: float) -> np.ndarray:
    return (p + eps) / (1.0 + eps * p.shape[0])


def kl_divergence(p: np.ndarray, q: np.ndarray, smoothing: float = DEFAULT_KL_SMOOTHING) -> float:
    """KL(p ‖ q) in nats between two distributions over the same K modes.

    Both are smoothed as ``(p + ε) / (1 + K ε)`` so that a mode with no generated sample
    gives a large finite penalty (about ``p log(p / ε)``) instead of infinity; equal
    distributions still give exactly 0.

    Args:
        p: ``(K,)`` probabilities (the training shares).
        q: ``(K,)`` probabilities (the generated shares).
        smoothing: ε, ``> 0``.

    Returns:
        The divergence, a float ``>= 0``.
    """
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing}")
    p = _smoothed(np.asarray(p, dtype=np.float64), smoothing)
    q = _smoothed(np.asarray(q, dtype=np.float64), smoothing)
    return float(np.sum(p * np.log(p / q)))


def _mode_counts(labels: np.ndarray, n_modes: int, name: str, unassigned_ok: bool = False) -> np.ndarray:
    labels = _as_labels(labels, name)
    if labels.size == 0:
        raise ValueError(f"{name} is empty")
    if unassigned_ok:
        labels = labels[labels != UNASSIGNED]
        if labels.size == 0:
            return np.zeros(n_modes, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= n_modes:
        raise ValueError(
            f"{name} must lie in [0, {n_modes - 1}], got values in [{labels.min()}, {labels.max()}]"
        )
    return np.bincount(labels, minlength=n_modes)


def _check_coverage_args(n_modes, names, min_share_ratio) -> None:
    check_count(n_modes, "n_modes")
    if names is not None and len(names) != n_modes:
        raise ValueError(f"names has {len(names)} entries for n_modes={n_modes}")
    if not min_share_ratio > 0:
        raise ValueError(f"min_share_ratio must be > 0, got {min_share_ratio}")


def _per_mode_rows(
    names: list[str], train_counts: np.ndarray, gen_counts: np.ndarray, covered: np.ndarray
) -> list[dict]:
    train_share = train_counts / train_counts.sum()
    gen_share = gen_counts / max(int(gen_counts.sum()), 1)
    return [
        {
            "mode": m,
            "name": names[m],
            "train_share": float(train_share[m]),
            "generated_share": float(gen_share[m]),
            "train_count": int(train_counts[m]),
            "generated_count": int(gen_counts[m]),
            "covered": bool(covered[m]),
        }
        for m in range(len(names))
    ]


def mode_coverage(
    train_labels: np.ndarray,
    gen_labels: np.ndarray,
    n_modes: int,
    names: Sequence[str] | None = None,
    min_share_ratio: float = 0.25,
    smoothing: float = DEFAULT_KL_SMOOTHING,
) -> dict:
    """How generated samples spread over the training modes.

    A mode is covered when its generated share is at least ``min_share_ratio`` times its
    training share (a mode without training samples is trivially covered). Generated labels
    equal to ``UNASSIGNED`` (-1, see :func:`confident_modes`) count towards no mode: shares,
    coverage and KL are taken over the assigned samples only (with none assigned, every mode
    with training samples is missing).

    Args:
        train_labels: ``(N,)`` integer modes of training samples, in ``[0, n_modes)``.
        gen_labels: ``(M,)`` integer modes of generated samples, in ``[0, n_modes)`` or -1.
        n_modes: number of modes K.
        names: optional K mode names (e.g. class names); default ``str(mode)``.
        min_share_ratio: coverage threshold relative to the training share, ``> 0``.
        smoothing: ε of :func:`kl_divergence`.

    Returns:
        dict with ``total`` (K), ``covered``, ``covered_fraction``, ``missing`` (names if
        given, else mode ids), ``kl_divergence`` (KL(train ‖ generated)), ``n_distinct``
        (modes with at least one generated sample), ``n_assigned``, ``n_unassigned`` and
        ``per_mode``: one dict per mode with ``mode``, ``name``, ``train_share``,
        ``generated_share``, ``train_count``, ``generated_count``, ``covered``.
    """
    _check_coverage_args(n_modes, names, min_share_ratio)
    train_counts = _mode_counts(train_labels, n_modes, "train_labels")
    gen_counts = _mode_counts(gen_labels, n_modes, "gen_labels", unassigned_ok=True)
    n_assigned = int(gen_counts.sum())
    train_share = train_counts / train_counts.sum()
    gen_share = gen_counts / max(n_assigned, 1)
    covered = gen_share >= min_share_ratio * train_share
    labels = [str(m) for m in range(n_modes)] if names is None else [str(n) for n in names]
    per_mode = _per_mode_rows(labels, train_counts, gen_counts, covered)
    missing = [m if names is None else labels[m] for m in np.flatnonzero(~covered).tolist()]
    return {
        "total": int(n_modes),
        "covered": int(covered.sum()),
        "covered_fraction": float(covered.mean()),
        "missing": missing,
        "kl_divergence": kl_divergence(train_share, gen_share, smoothing),
        "n_distinct": int((gen_counts > 0).sum()),
        "n_assigned": n_assigned,
        "n_unassigned": int(np.asarray(gen_labels).size - n_assigned),
        "per_mode": per_mode,
    }


# --- confident assignment ------------------------------------------------------------------

UNASSIGNED = -1


def class_distances(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    queries: np.ndarray,
    n_modes: int,
    k: int = 5,
    self_index: np.ndarray | None = None,
) -> np.ndarray:
    """Mean distance of each query to its ``k`` nearest training samples of each mode.

    One blockwise pass over the training features for every mode at once
    (:func:`ganaudit.search.index.grouped_knn`: no mode's rows are gathered, no
    query-by-training matrix). A mode with fewer
    than ``k`` training samples uses all of them; a mode with none is at infinite distance.

    Args:
        train_features: ``(N, D)`` float32 training features.
        train_labels: ``(N,)`` integer modes in ``[0, n_modes)``.
        queries: ``(M, D)`` float32 features.
        n_modes: number of modes K.
        k: neighbours averaged per mode, ``>= 1``.
        self_index: optional ``(M,)`` training row of each query (leave-one-out: a query
            never counts itself; -1 for a query that is not a training row).

    Returns:
        ``(M, K)`` float64 distances.
    """
    train = as_features(train_features, "train_features")
    queries = as_features(queries, "queries")
    check_same_dim(train_features=train, queries=queries)
    labels = _as_labels(train_labels, "train_labels")
    check_count(k, "k")
    if labels.shape[0] != train.shape[0]:
        raise ValueError(f"{labels.shape[0]} train_labels for {train.shape[0]} train_features")
    own = np.full(queries.shape[0], -1) if self_index is None else np.asarray(self_index, np.int64)
    out = np.full((queries.shape[0], n_modes), np.inf)
    if queries.shape[0] == 0:
        return out
    sizes = np.bincount(labels, minlength=n_modes)[:n_modes]
    # a mode holding one of the queries' own rows needs one neighbour more (dropped below)
    own_mode = np.zeros(n_modes, bool)
    own_labels = labels[own[own >= 0]]
    own_mode[own_labels[(own_labels >= 0) & (own_labels < n_modes)]] = True
    ks = np.minimum(k + own_mode, sizes)
    all_dist, all_idx = grouped_knn(train, labels, queries, ks)  # one pass over train, no gather
    for mode in np.flatnonzero(sizes):
        dist = all_dist[mode].astype(np.float64)
        dist[all_idx[mode] == own[:, None]] = np.nan  # drop the query's own row
        usable = min(k, sizes[mode] - 1) if own_mode[mode] else min(k, sizes[mode])
        # Keep the first `usable` non-dropped distances of each row (nan sorts last).
        kept = np.sort(dist, axis=1)[:, :max(usable, 1)]
        counted = (~np.isnan(kept)).sum(axis=1)
        total = np.nansum(kept, axis=1)
        out[:, mode] = np.where(counted > 0, total / np.maximum(counted, 1), np.inf)
    return out


def _margins(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest mode and margin (second-nearest / nearest mean distance, >= 1) of each row."""
    best = np.argmin(dist, axis=1)
    if dist.shape[1] == 1:
        return best, np.full(dist.shape[0], np.inf)
    two = np.partition(dist, 1, axis=1)[:, :2]
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(two[:, 0] > 0, two[:, 1] / two[:, 0], np.where(two[:, 1] > 0, np.inf, 1.0))
    return best, margin


def _worst_confusion(best, ref_labels, confident, n_modes) -> np.ndarray:
    """(K,) worst share, over true modes y != c, of y's confident reference rows assigned to c."""
    worst = np.zeros(n_modes)
    for y in np.unique(ref_labels):
        rows = confident & (ref_labels == y)
        if rows.any():
            share = np.bincount(best[rows], minlength=n_modes) / rows.sum()
            share[y] = 0.0
            worst = np.maximum(worst, share)
    return worst


def calibrate_margin(
    ref_dist: np.ndarray, ref_labels: np.ndarray, train_share: np.ndarray, min_share_ratio: float,
    safety: float = CONFUSION_SAFETY,
) -> float:
    """The smallest margin at which the reference shows no mode leaking into another too much.

    A confidently assigned sample of true mode y lands in mode c != y at a rate r(y -> c); a
    generator that makes only mode y would then be credited with mode c at share r(y -> c),
    and the coverage rule counts c as covered once that reaches ``min_share_ratio`` times c's
    training share. The threshold is the smallest margin t (among the reference's own margin
    quantiles) at which, on the reference, every ``r(y -> c) <= safety * min_share_ratio *
    train_share[c]``; ``inf`` (nothing confident) when none does.

    Args:
        ref_dist: ``(R, K)`` :func:`class_distances` of reference images of known mode.
        ref_labels: ``(R,)`` their modes.
        train_share: ``(K,)`` training share of each mode.
        min_share_ratio: the coverage rule's ratio.
        safety: factor below 1 that leaves room for the reference's sampling error.

    Returns:
        The margin threshold, ``>= 1`` or ``inf``.
    """
    best, margin = _margins(ref_dist)
    bound = safety * min_share_ratio * np.asarray(train_share, np.float64)
    finite = margin[np.isfinite(margin)]
    grid = np.quantile(finite, np.linspace(0, 1, MARGIN_CANDIDATES)) if finite.size else np.empty(0)
    for t in np.unique(np.r_[1.0, grid, np.inf]):
        confident = margin >= t
        if (_worst_confusion(best, ref_labels, confident, ref_dist.shape[1]) <= bound).all():
            return float(t)
    return float("inf")


def margin_floor(ref_margins: np.ndarray, tail: float = MARGIN_TAIL) -> float:
    """The margin below which a sample sits as no more than ``tail`` of the reference images do.

    The conformal lower quantile: the ``floor(tail (R + 1))``-th smallest of the ``R``
    reference margins (1.0 when ``R < 1 / tail - 1``, which refuses nothing). A genuine image
    of a mode falls below it with probability at most ``tail``.
    """
    m = np.sort(np.asarray(ref_margins, np.float64))
    rank = int(np.floor(tail * (m.size + 1)))
    return float(m[rank - 1]) if rank >= 1 and np.isfinite(m[rank - 1]) else 1.0


def confident_modes(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    gen_features: np.ndarray,
    n_modes: int,
    k: int = 5,
    min_share_ratio: float = 0.25,
    reference_features: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Assign each generated sample to a mode only when the features can tell its mode.

    Each sample's distance to a mode is its mean distance to the mode's ``k`` nearest training
    samples (:func:`class_distances`); its candidate mode is the nearest. The assignment is
    confident when the second-nearest mode is at least ``t`` times as far (the margin), with
    ``t`` the larger of :func:`calibrate_margin` on reference images of known mode (how often
    the rule puts them in a wrong mode, against what the coverage rule tolerates) and
    :func:`margin_floor` (the margin no more than 1% of the reference images fall below). An
    image unlike every mode (noise) is about as far from all of them, so its margin is small
    and below the floor; an imperfect rendering of one mode (farther from it than any training
    image, but far nearer to it than to any other) keeps its mode.

    The reference is ``reference_features`` with their ``reference_labels`` (a holdout) when
    given, otherwise leave-one-out training images (each scored against the training set
    without itself), at most ``REFERENCE_MAX`` of them, seeded. Both are images the training
    set does not contain (or, leave-one-out, does not count), so the calibration carries over
    to unseen samples of the same modes.

    Args:
        train_features: ``(N, D)`` float32 training features.
        train_labels: ``(N,)`` integer modes in ``[0, n_modes)``.
        gen_features: ``(M, D)`` float32 generated features.
        n_modes: number of modes K.
        k: neighbours per mode (the audit's ``nearest_k``).
        min_share_ratio: the coverage rule's ratio (see :func:`mode_coverage`).
        reference_features: optional ``(R, D)`` held-out features of known mode.
        reference_labels: their ``(R,)`` modes (required with ``reference_features``).
        seed: seed of the leave-one-out subsample.

    Returns:
        ``(labels, info)``: ``(M,)`` int64 modes with ``UNASSIGNED`` (-1) for unconfident
        samples, and a dict with ``rule``, ``reference`` (``"holdout"`` or
        ``"train-leave-one-out"``), ``n_reference``, ``k``, ``margin_threshold`` (None when
        no margin is safe), ``margin_safe`` and ``margin_floor`` (its two parts),
        ``reference_assigned_fraction`` and ``reference_accuracy`` (of
        the confident reference assignments) and ``n_unassigned``.
    """
    train = as_features(train_features, "train_features")
    labels = _as_labels(train_labels, "train_labels")
    check_count(n_modes, "n_modes")
    train_counts = _mode_counts(labels, n_modes, "train_labels")
    if reference_features is not None:
        if reference_labels is None:
            raise ValueError("reference_features need reference_labels")
        _mode_counts(reference_labels, n_modes, "reference_labels")  # checks the range
        ref_labels = _as_labels(reference_labels, "reference_labels")
        if ref_labels.shape[0] != np.asarray(reference_features).shape[0]:
            raise ValueError(f"{ref_labels.shape[0]} reference_labels for {np.asarray(reference_features).shape[0]} rows")
        ref_dist = class_distances(train, labels, reference_features, n_modes, k)
        method = "holdout"
    else:
        rng = np.random.default_rng(seed)
        rows = np.arange(train.shape[0])
        if rows.size > REFERENCE_MAX:
            rows = np.sort(rng.choice(rows.size, REFERENCE_MAX, replace=False))
        ref_labels = labels[rows]
        ref_dist = class_distances(train, labels, take_rows(train, rows), n_modes, k, self_index=rows)
        method = "train-leave-one-out"
    safe = calibrate_margin(ref_dist, ref_labels, train_counts / train_counts.sum(), min_share_ratio)
    floor = margin_floor(_margins(ref_dist)[1])
    threshold = max(safe, floor)
    gen_dist = class_distances(train, labels, gen_features, n_modes, k)
    best, margin = _margins(gen_dist)
    out = np.where(margin >= threshold, best, UNASSIGNED).astype(np.int64)
    ref_best, ref_margin = _margins(ref_dist)
    ref_sure = ref_margin >= threshold
    return out, {
        "rule": "margin",
        "reference": method,
        "n_reference": int(ref_labels.size),
        "k": int(k),
        "margin_threshold": None if not np.isfinite(threshold) else float(threshold),
        "margin_safe": None if not np.isfinite(safe) else float(safe),
        "margin_floor": float(floor),
        "reference_assigned_fraction": float(ref_sure.mean()),
        "reference_accuracy": float((ref_best[ref_sure] == ref_labels[ref_sure]).mean()) if ref_sure.any() else None,
        "n_unassigned": int((out == UNASSIGNED).sum()),
    }
