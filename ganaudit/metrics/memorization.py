"""Memorisation metrics over feature arrays: copy scores, C_T, authenticity, MIA AUC.

All neighbour search goes through ``ganaudit.search.index.knn`` (blockwise FAISS, Euclidean): no
N×N matrix is ever built. Scores, thresholds, p-values and copy counts for flagging single
samples are in ``ganaudit.metrics.copy_stats``.

Argument order is always real before fake: ``(train, [holdout,] generated)``.
"""
from __future__ import annotations

import numpy as np

from ganaudit.features import as_features, block_rows, check_count, check_same_dim, release_pages, take_rows
from ganaudit.search.index import FlatIndex, knn
from ganaudit.metrics.clustering import kmeans_centroids, nearest_centroid
from ganaudit.metrics.copy_stats import mann_whitney_u, rank_auc

# Meehan et al.'s code keeps cells holding more than 20 generated samples (tau = 20 / m).
MIN_GENERATED_PER_CELL = 20


def _nearest_distance(database: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, idx = knn(database, queries, k=1)
    return dist[:, 0], idx[:, 0]


def _mann_whitney_z(generated: np.ndarray, holdout: np.ndarray) -> float:
    """Z-score of the Mann–Whitney U of ``generated`` against ``holdout`` (as Meehan et al.).

    U counts pairs with the generated distance larger (ties count 1/2); under the null its
    mean is m n / 2 and variance m n (m + n + 1) / 12 (no tie correction), with the 0.5
    continuity correction of the authors' code toward the copying (lower) tail.
    """
    m, n = generated.size, holdout.size
    u = mann_whitney_u(generated, holdout)
    return float((u - m * n / 2.0 + 0.5) / np.sqrt(m * n * (m + n + 1) / 12.0))


def within_cell_nearest_distances(
    train: np.ndarray, train_cells: np.ndarray, queries: np.ndarray, query_cells: np.ndarray
) -> np.ndarray:
    """Distance of each query to its nearest training point in the query's own cell.

    This is L(x) of Meehan et al.'s code (``Zu`` fits a nearest-neighbour model on the
    training points of one cell and queries it with that cell's samples). The training set is
    read in blocks of at most ``RESIDENT_BLOCK_BYTES`` (a memory map's pages released after
    each), with one FAISS search per cell within a block: no query-by-training matrix is
    built, and memory does not grow with the training set.

    Args:
        train: ``(N, D)`` float32 training features.
        train_cells: ``(N,)`` integer cell of each training point.
        queries: ``(M, D)`` float32 features.
        query_cells: ``(M,)`` integer cell of each query.

    Returns:
        ``(M,)`` float64 Euclidean distances; NaN for a query whose cell holds no training point.
    """
    train_cells, query_cells = np.asarray(train_cells), np.asarray(query_cells)
    if train_cells.shape != (train.shape[0],) or query_cells.shape != (queries.shape[0],):
        raise ValueError("each feature array needs one cell label per row")
    out = np.full(queries.shape[0], np.inf)
    by_cell = {cell: np.flatnonzero(query_cells == cell) for cell in np.unique(query_cells)}
    step = block_rows(train.shape[1], 1 << 62)
    for start in range(0, train.shape[0], step):
        block, cells = np.asarray(train[start : start + step]), train_cells[start : start + step]
        for cell in np.intersect1d(np.unique(cells), list(by_cell)):
            rows = by_cell[cell]
            nearest = _nearest_distance(block[cells == cell], queries[rows])[0]
            out[rows] = np.minimum(out[rows], nearest)
        release_pages(train)
    out[np.isinf(out)] = np.nan
    return out


def ct_statistic_from_cells(
    holdout_dist: np.ndarray,
    holdout_cells: np.ndarray,
    generated_dist: np.ndarray,
    generated_cells: np.ndarray,
    min_generated: int = MIN_GENERATED_PER_CELL,
) -> float:
    """C_T from nearest-training distances and cell labels (the part after the partition).

    Args:
        holdout_dist: ``(n,)`` distance of each held-out sample to its nearest training point
            in its own cell (:func:`within_cell_nearest_distances`), as the reference code does.
        holdout_cells: ``(n,)`` integer cell of each held-out sample.
        generated_dist: ``(m,)`` the same for the generated samples.
        generated_cells: ``(m,)`` integer cell of each generated sample.
        min_generated: cells with at most this many generated samples are left out (the
            paper's tau = ``min_generated / m``; 20 as in the authors' experiments).

    Returns:
        The held-out-share-weighted mean of the per-cell Z-scores over the kept cells (the
        weights are each kept cell's share of all held-out samples, renormalised over the
        kept cells, as ``C_T`` in the reference code). A kept cell without held-out samples
        has weight 0 (the reference code refuses such a partition; its weight would be 0).
    """
    hd, gd = np.asarray(holdout_dist, np.float64), np.asarray(generated_dist, np.float64)
    hc, gc = np.asarray(holdout_cells), np.asarray(generated_cells)
    check_count(min_generated, "min_generated", minimum=0)
    if hd.ndim != 1 or hd.shape != hc.shape or gd.ndim != 1 or gd.shape != gc.shape:
        raise ValueError("each distance array must be 1-D and match its cell labels in length")
    cells, gen_counts = np.unique(gc, return_counts=True)
    z_scores, weights = [], []
    for cell in cells[gen_counts > min_generated]:
        in_holdout = hc == cell
        if in_holdout.any():  # a cell without held-out samples has weight 0
            h, g = hd[in_holdout], gd[gc == cell]
            if np.isnan(h).any() or np.isnan(g).any():
                raise ValueError(f"cell {cell} holds no training point: use fewer cells")
            z_scores.append(_mann_whitney_z(g, h))
            weights.append(in_holdout.mean())
    if not weights:
        raise ValueError(
            f"no cell holds more than {min_generated} generated samples and a held-out sample:"
            " use fewer cells or more samples"
        )
    return float(np.dot(weights, z_scores) / np.sum(weights))


def ct_statistic(
    train: np.ndarray,
    holdout: np.ndarray,
    generated: np.ndarray,
    n_cells: int,
    seed: int = 0,
    min_generated: int = MIN_GENERATED_PER_CELL,
) -> float:
    """C_T data-copying statistic (Meehan, Chaudhuri & Dasgupta, AISTATS 2020).

    As the authors' ``data_copying_tests.py`` computes it: cells come from k-means on the
    training features; each training, held-out and generated point belongs to the cell of
    its nearest centroid; in each cell, the distances of held-out and of generated samples
    to their nearest training point *in the same cell* are compared by a Mann–Whitney
    Z-score, and the Z-scores of the cells holding more than ``min_generated`` generated
    samples are averaged with weights equal to each cell's share of the held-out samples.

    Args:
        train: ``(N, D)`` float32 training features.
        holdout: ``(n, D)`` float32 held-out features from the same distribution.
        generated: ``(m, D)`` float32 generated features.
        n_cells: number of k-means cells.
        seed: k-means seed.
        min_generated: see ``ct_statistic_from_cells``.

    Returns:
        C_T: about 0 when the generator does not copy, strongly negative (below about -3)
        when generated samples are closer to the training set than fresh data (copying),
        positive when they are farther (underfitting).
    """
    train, holdout = as_features(train, "train"), as_features(holdout, "holdout")
    generated = as_features(generated, "generated")
    check_same_dim(train=train, holdout=holdout, generated=generated)
    centroids = kmeans_centroids(train, n_cells, seed=seed, init="faiss")
    train_cells = nearest_centroid(train, centroids)
    holdout_cells = nearest_centroid(holdout, centroids)
    generated_cells = nearest_centroid(generated, centroids)
    return ct_statistic_from_cells(
        within_cell_nearest_distances(train, train_cells, holdout, holdout_cells),
        holdout_cells,
        within_cell_nearest_distances(train, train_cells, generated, generated_cells),
        generated_cells,
        min_generated=min_generated,
    )


def authentic_mask(
    train: np.ndarray, generated: np.ndarray, train_nn_dist: np.ndarray | None = None
) -> np.ndarray:
    """Which generated samples are authentic (Alaa et al. 2022, "How faithful is your...").

    A generated sample g with nearest training point r* is inauthentic when
    ``d(g, r*) <= d(r*, nearest other training point)``: it sits inside r*'s own
    nearest-neighbour ball. Ties count as inauthentic, so a copy of a training example that
    is duplicated in the training set is inauthentic too.

    Args:
        train: ``(N, D)`` float32 training features, ``N >= 2``.
        generated: ``(M, D)`` float32 generated features.
        train_nn_dist: optional ``(N,)`` leave-one-out nearest distance of each training
            point (``knn(train, train, 1, exclude_self=True)``), if already computed.

    Returns:
        ``(M,)`` bool array, True for authentic samples.
    """
    train, generated = as_features(train, "train"), as_features(generated, "generated")
    check_same_dim(train=train, generated=generated)
    if train.shape[0] < 2:
        raise ValueError("authenticity needs at least 2 training samples")
    dist, nearest = _nearest_distance(train, generated)
    if train_nn_dist is None:
        # Only the matched training points' own balls are needed: a leave-one-out search of
        # those M rows, not of all N (which would cost N x N).
        matched = np.unique(nearest)
        own = FlatIndex(train).search(take_rows(train, matched), 1, exclude=matched)[0][:, 0]
        return dist > own[np.searchsorted(matched, nearest)]
    train_nn_dist = np.asarray(train_nn_dist, dtype=np.float32)
    if train_nn_dist.shape != (train.shape[0],):
        raise ValueError(f"train_nn_dist must have shape ({train.shape[0]},)")
    return dist > train_nn_dist[nearest]


def authenticity(train: np.ndarray, generated: np.ndarray) -> float:
    """Fraction of generated samples that are authentic, in [0, 1] (see ``authentic_mask``).

    Args:
        train: ``(N, D)`` float32 training features.
        generated: ``(M, D)`` float32 generated features.

    Returns:
        1.0 when no generated sample falls inside a training point's nearest-neighbour ball,
        0.0 when all are copies.
    """
    return float(authentic_mask(train, generated).mean())


def mia_auc(
    train: np.ndarray, holdout: np.ndarray, generated: np.ndarray, seed: int = 0
) -> float:
    """Membership-inference AUC, full black-box attack of GAN-Leaks (Chen et al. 2020).

    Each training and held-out sample is scored by its distance to the nearest generated
    sample (closer = more likely a member); the AUC measures how well that tells training
    from held-out samples. Every training and every held-out sample is scored: an ROC AUC is
    the probability that a random member scores above a random non-member, which needs no
    balance between the two classes (it is ``sklearn.metrics.roc_auc_score`` of the scores).

    Args:
        train: ``(N, D)`` float32 training features (members).
        holdout: ``(n, D)`` float32 held-out features (non-members).
        generated: ``(m, D)`` float32 generated features.
        seed: unused (the AUC takes no sample); kept so that existing calls still work.

    Returns:
        ROC AUC in [0, 1]: 0.5 = no leak, near 1 = the generator reveals its training set.
    """
    del seed  # nothing random left: every training and held-out sample is scored
    train, holdout = as_features(train, "train"), as_features(holdout, "holdout")
    generated = as_features(generated, "generated")
    check_same_dim(train=train, holdout=holdout, generated=generated)
    member_dist = _nearest_distance(generated, train)[0]
    other_dist = _nearest_distance(generated, holdout)[0]
    return rank_auc(-member_dist, -other_dist)  # members are the positives: closer scores higher
