"""K-means with FAISS and nearest-centroid assignment: the partitions C_T and the modes use.

Two initialisations, because the two users follow two references:

- ``init="faiss"``: FAISS' own random initialisation, seeded; one run. C_T's cells, as
  Meehan et al.'s code partitions with a plain k-means.
- ``init="k-means++"``: greedy k-means++ seeding (as scikit-learn's), ``n_init`` starts,
  the lowest objective kept. Mode discovery, where FAISS' random start often merges two blobs.
"""
from __future__ import annotations

import numpy as np

from ganaudit.features import as_features, block_rows, check_count, check_same_dim, release_pages, take_rows
from ganaudit.search.index import faiss_seed, knn

KMEANS_ITERATIONS = 25
# Rows per centroid k-means is fitted on (FAISS' own max_points_per_centroid): a larger set is
# subsampled, seeded, before seeding and fitting, so memory and time do not grow with N.
MAX_POINTS_PER_CENTROID = 256
ASSIGN_BLOCK = 65_536  # rows assigned to centroids at a time
INITS = ("faiss", "k-means++")


def kmeans_centroids(x: np.ndarray, n_clusters: int, seed: int = 0, init: str = "faiss",
                     n_init: int = 1) -> np.ndarray:
    """Cluster ``x`` into ``n_clusters`` with FAISS k-means (25 iterations).

    Args:
        x: ``(N, D)`` float32 features.
        n_clusters: ``1 <= n_clusters <= N``.
        seed: seed of the initialisation(s).
        init: ``"faiss"`` or ``"k-means++"`` (see the module docstring).
        n_init: starts with ``"k-means++"``; the best objective wins.

    Returns:
        ``(n_clusters, D)`` float32 centroids.
    """
    import faiss

    x = as_features(x, "x")
    n_clusters = check_count(n_clusters, "n_clusters")
    if n_clusters > x.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {x.shape[0]}] (the sample count), got {n_clusters}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    x = fit_sample(x, n_clusters, seed)

    def new_kmeans(faiss_seed: int):
        # min_points_per_centroid=1: FAISS warns on stderr below 39 points per centroid; small cells are fine here.
        return faiss.Kmeans(x.shape[1], n_clusters, niter=KMEANS_ITERATIONS, seed=faiss_seed, verbose=False,
                            min_points_per_centroid=1)

    if init == "faiss":
        kmeans = new_kmeans(faiss_seed(seed))
        kmeans.train(x)
        return np.ascontiguousarray(kmeans.centroids, dtype=np.float32).reshape(n_clusters, x.shape[1])
    rng = np.random.default_rng(seed)
    best_obj, best = np.inf, None
    for _ in range(n_init):
        kmeans = new_kmeans(int(rng.integers(2**31)))
        obj = kmeans.train(x, init_centroids=_kmeans_plus_plus(x, n_clusters, rng))
        if obj < best_obj or best is None:
            best_obj, best = obj, kmeans.centroids
    return np.asarray(best, dtype=np.float32).reshape(n_clusters, x.shape[1])


def nearest_centroid(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) of each row of ``features``.

    Args:
        features: ``(M, D)`` float32 features.
        centroids: ``(K, D)`` float32 centroids, e.g. from :func:`kmeans_centroids`.

    Returns:
        ``(M,)`` int64 centroid indices.
    """
    features = as_features(features, "features")
    centroids = as_features(centroids, "centroids")
    check_same_dim(features=features, centroids=centroids)
    out = np.empty(features.shape[0], dtype=np.int64)
    rows = block_rows(features.shape[1], ASSIGN_BLOCK)  # a memory-mapped matrix: one block (RESIDENT_BLOCK_BYTES) resident
    for start in range(0, features.shape[0], rows):
        out[start : start + rows] = knn(centroids, features[start : start + rows], k=1)[1][:, 0]
        release_pages(features)
    return out


def fit_sample(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """``x``, or a seeded subsample of ``MAX_POINTS_PER_CENTROID × n_clusters`` of its rows
    (in their order) when it has more: what k-means is fitted on."""
    limit = MAX_POINTS_PER_CENTROID * n_clusters
    if x.shape[0] <= limit:
        return x
    rows = np.sort(np.random.default_rng([seed, n_clusters]).choice(x.shape[0], limit, replace=False))
    return take_rows(x, rows)


def _kmeans_plus_plus(x: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn's): ``(K, D)`` float32 initial centroids.

    Memory is ``O(trials × N)``: distances to a few candidates at a time, never N×N.
    """
    x64 = x.astype(np.float64)
    sq_norms = np.einsum("ij,ij->i", x64, x64)
    n_trials = 2 + int(np.log(n_clusters))
    chosen = [int(rng.integers(x.shape[0]))]
    closest = np.maximum(sq_norms - 2 * x64 @ x64[chosen[0]] + sq_norms[chosen[0]], 0.0)
    for _ in range(1, n_clusters):
        total = closest.sum()
        p = closest / total if total > 0 else None  # all points identical: uniform
        candidates = rng.choice(x.shape[0], n_trials, p=p)
        d = sq_norms[None, :] - 2 * x64[candidates] @ x64.T + sq_norms[candidates, None]
        pot = np.minimum(closest[None, :], np.maximum(d, 0.0))
        best = int(np.argmin(pot.sum(axis=1)))
        chosen.append(int(candidates[best]))
        closest = pot[best]
    return x[chosen]
