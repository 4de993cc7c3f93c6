"""Scores and calibration for flagging generated samples that copy training examples.

Everything here works on numbers already computed (nearest-neighbour distances, scores,
p-values, nearest-training indices); the feature-level metrics that produce them are in
``memorization.py``.

The flagging rule is conformal: a reference set of scores from samples known not to be
copies (held-out images against the training set, or training images leave-one-out) fixes
the threshold, and a sample is flagged when its score is more extreme (smaller) than all but
a fraction ``alpha`` of the reference. ``calibrate_threshold`` and ``empirical_p_values``
agree exactly: ``score < threshold`` if and only if ``p_value <= alpha``.
"""
from __future__ import annotations

import math

import numpy as np

# Relative tolerance when turning alpha * (n + 1) into a count: 0.05 * 2000 must give 100.
_COUNT_RTOL = 1e-9


def relative_nn_score(dist: np.ndarray) -> np.ndarray:
    """Relative nearest-neighbour score: first distance over the mean of the next k.

    A copy of a training example sits much closer to it than to the example's own
    neighbours (Carlini et al. 2023, "Extracting training data from diffusion models").
    Smaller is more suspicious; a query whose nearest distances are all zero (a copy of an
    example duplicated in the training set) scores 0.

    Args:
        dist: ``(M, k + 1)`` float array, ``k >= 1``: Euclidean distances from each query
            to its ``k + 1`` nearest training points, ascending along each row.

    Returns:
        ``(M,)`` float64 array ``d_1 / mean(d_2, ..., d_{k+1})``.
    """
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"dist must be an (M, k + 1) array with k >= 1, got shape {d.shape}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("dist must hold finite, non-negative distances")
    if (np.diff(d, axis=1) < 0).any():
        raise ValueError("each row of dist must be sorted ascending (nearest first)")
    first = d[:, 0]
    rest = d[:, 1:].mean(axis=1)
    # rest == 0 forces first == 0 (rows are ascending): an exact copy, the smallest score.
    return np.divide(first, rest, out=np.zeros_like(first), where=rest > 0)


def cosine_to_distance(sim: np.ndarray) -> np.ndarray:
    """Euclidean distance between L2-normalised vectors from their cosine similarity.

    ``||x - y|| = sqrt(2 - 2 <x, y>)`` for unit vectors; rounding that pushes a similarity
    past 1 is clipped to distance 0.

    Args:
        sim: float array of any shape, e.g. ``(M, k)`` inner products from ``knn(metric="ip")``.

    Returns:
        Float array of the same shape (float64 unless ``sim`` is already floating).
    """
    s = np.asarray(sim)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    return np.sqrt(np.maximum(2.0 - 2.0 * s, 0.0))


def _as_reference(reference_scores: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference_scores, dtype=np.float64)
    if ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"reference_scores must be a non-empty 1-D array, got shape {ref.shape}")
    if np.isnan(ref).any():
        raise ValueError("reference_scores contains NaN")
    return ref


def _check_level(value: float, name: str) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def calibrate_threshold(reference_scores: np.ndarray, alpha: float = 0.01) -> float:
    """Score threshold that flags a fraction ``alpha`` of non-copies (conformal quantile).

    The threshold is the ``j``-th smallest reference score with ``j = floor(alpha (n + 1))``;
    a sample is flagged when ``score < threshold``. If the sample and the ``n`` reference
    scores are exchangeable (a generator that does not copy), the chance it is flagged is
    ``j / (n + 1) <= alpha`` exactly, and the rule equals ``empirical_p_values(...) <= alpha``.

    Args:
        reference_scores: ``(n,)`` scores of samples that are not copies, e.g. holdout→train
            relative scores, or leave-one-out train→train ones when there is no holdout set.
        alpha: false-flag rate in (0, 1).

    Returns:
        The threshold, a float.

    Raises:
        ValueError: on bad arguments, or when ``n < 1 / alpha - 1`` (too few reference scores
            to reach level ``alpha``).
    """
    ref = _as_reference(reference_scores)
    alpha = _check_level(alpha, "alpha")
    j = math.floor(alpha * (ref.size + 1) * (1 + _COUNT_RTOL))
    if j < 1:
        need = math.ceil(1 / alpha - 1)
        raise ValueError(
            f"{ref.size} reference scores cannot calibrate alpha={alpha}: need at least {need}"
        )
    return float(np.partition(ref, j - 1)[j - 1])


def empirical_p_values(scores: np.ndarray, reference_scores: np.ndarray) -> np.ndarray:
    """Conformal p-values of scores against a reference of non-copies (small = suspicious).

    ``p = (1 + #{reference <= score}) / (n + 1)``: valid (``P(p <= a) <= a``) when the score
    and the reference are exchangeable.

    Args:
        scores: ``(M,)`` float array.
        reference_scores: ``(n,)`` float array.

    Returns:
        ``(M,)`` float64 p-values in ``[1 / (n + 1), 1]``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or np.isnan(s).any():
        raise ValueError(f"scores must be a 1-D array without NaN, got shape {s.shape}")
    ref = np.sort(_as_reference(reference_scores))
    at_or_below = np.searchsorted(ref, s, side="right")
    return (1.0 + at_or_below) / (ref.size + 1.0)


def benjamini_hochberg(p_values: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Benjamini–Hochberg step-up procedure: which hypotheses are discoveries at FDR ``q``.

    With ``p_(1) <= ... <= p_(m)``, the largest ``k`` such that ``p_(k) <= k q / m`` is found
    and the ``k`` smallest p-values are rejected (none if no such ``k``).

    Args:
        p_values: ``(m,)`` float array in ``[0, 1]``.
        q: false discovery rate in (0, 1).

    Returns:
        ``(m,)`` bool array, True for discoveries.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a 1-D array, got shape {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p_values must lie in [0, 1]")
    q = _check_level(q, "q")
    m = p.size
    order = np.argsort(p, kind="stable")
    below = p[order] <= q * np.arange(1, m + 1) / m
    n_reject = int(np.flatnonzero(below)[-1]) + 1 if below.any() else 0
    mask = np.zeros(m, dtype=bool)
    mask[order[:n_reject]] = True
    return mask


def binomial_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson (exact) confidence interval for a binomial proportion ``k / n``.

    The same interval as ``scipy.stats.binomtest(k, n).proportion_ci(confidence)``
    (its default ``method="exact"``): conservative, never shorter than its nominal level.

    Args:
        k: successes, ``0 <= k <= n``.
        n: trials, ``n >= 1``.
        confidence: two-sided confidence level in (0, 1).

    Returns:
        ``(low, high)`` with ``0 <= low <= k / n <= high <= 1``.
    """
    from scipy.special import betaincinv  # beta.ppf's own routine, without scipy.stats' import cost

    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be integers, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    tail = (1.0 - _check_level(confidence, "confidence")) / 2.0
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, tail))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - tail))
    return low, high


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank (``scipy.stats.rankdata``).

    Args:
        x: ``(N,)`` numbers.

    Returns:
        ``(N,)`` float64 ranks.
    """
    x = np.asarray(x).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], x.size]  # one past the last
    group = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]  # mean of ranks starts+1 .. ends
    return ranks


def mann_whitney_u(a: np.ndarray, b: np.ndarray) -> float:
    """Mann–Whitney U of ``a`` against ``b``: the pairs with the ``a`` value larger, ties 1/2."""
    m = len(a)
    ranks = average_ranks(np.concatenate([a, b]))
    return float(ranks[:m].sum() - m * (m + 1) / 2.0)


def rank_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of scores: the probability that a positive scores above a negative, ties 1/2.

    The Mann–Whitney U over ``len(positive)·len(negative)``; equal to
    ``sklearn.metrics.roc_auc_score`` on the same scores.
    """
    return mann_whitney_u(positive, negative) / (len(positive) * len(negative))


def leaked_train_examples(copied_train_indices: np.ndarray, n_train: int) -> list[tuple[int, int]]:
    """Training examples that flagged samples copy, most-copied first.

    Args:
        copied_train_indices: ``(F,)`` integer nearest-training index of each flagged sample.
        n_train: size of the training set (indices must lie in ``[0, n_train)``).

    Returns:
        ``[(train_index, count), ...]`` for every example copied at least once, by count
        descending, then index ascending.
    """
    idx = np.asarray(copied_train_indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError("copied_train_indices must be a 1-D integer array")
    if idx.size and (idx.min() < 0 or idx.max() >= n_train):
        raise ValueError(f"copied_train_indices must lie in [0, {n_train})")
    counts = np.bincount(idx.astype(np.int64), minlength=0)
    copied = np.flatnonzero(counts)
    order = copied[np.lexsort((copied, -counts[copied]))]
    return [(int(i), int(counts[i])) for i in order]
