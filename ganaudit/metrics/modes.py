"""Modes of the training distribution and how generated samples spread over them.

Modes come from class labels when the training set has them, otherwise from k-means on the
training features (:func:`kmeans_modes`). Generated samples get a mode by a k-NN vote among
labelled training samples (:func:`knn_vote_labels`) or by their nearest centroid
(:func:`ganaudit.metrics.clustering.nearest_centroid`). :func:`mode_coverage` then compares the two distributions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ganaudit.features import as_features, check_count, check_same_dim
from ganaudit.search.index import knn
from ganaudit.metrics.clustering import kmeans_centroids, nearest_centroid


DEFAULT_KL_SMOOTHING = 1e-6
# Best of a few k-means++ initialisations: FAISS' own random init often merges two blobs.
KMEANS_N_INIT = 3
# Automatic choice of K: candidates and the size of the subsample the choice is made on.
DEFAULT_MODE_RANGE = (2, 20)
SELECTION_SAMPLE = 5000
SILHOUETTE_SAMPLE = 2000


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


def _mode_counts(labels: np.ndarray, n_modes: int, name: str) -> np.ndarray:
    labels = _as_labels(labels, name)
    if labels.size == 0:
        raise ValueError(f"{name} is empty")
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
    gen_share = gen_counts / gen_counts.sum()
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
    training share (a mode without training samples is trivially covered).

    Args:
        train_labels: ``(N,)`` integer modes of training samples, in ``[0, n_modes)``.
        gen_labels: ``(M,)`` integer modes of generated samples, in ``[0, n_modes)``.
        n_modes: number of modes K.
        names: optional K mode names (e.g. class names); default ``str(mode)``.
        min_share_ratio: coverage threshold relative to the training share, ``> 0``.
        smoothing: ε of :func:`kl_divergence`.

    Returns:
        dict with ``total`` (K), ``covered``, ``covered_fraction``, ``missing`` (names if
        given, else mode ids), ``kl_divergence`` (KL(train ‖ generated)), ``n_distinct``
        (modes with at least one generated sample) and ``per_mode``: one dict per mode with
        ``mode``, ``name``, ``train_share``, ``generated_share``, ``train_count``,
        ``generated_count``, ``covered``.
    """
    _check_coverage_args(n_modes, names, min_share_ratio)
    train_counts = _mode_counts(train_labels, n_modes, "train_labels")
    gen_counts = _mode_counts(gen_labels, n_modes, "gen_labels")
    train_share = train_counts / train_counts.sum()
    gen_share = gen_counts / gen_counts.sum()
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
        "per_mode": per_mode,
    }
