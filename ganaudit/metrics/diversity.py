"""Diversity of generated samples: Vendi score and birthday-paradox support size.

**Vendi score** (Friedman & Dieng 2023): ``exp(-Σ λ log λ)`` over the eigenvalues ``λ`` of
``K / N``, ``K`` the cosine-similarity (or linear-kernel) matrix: the effective number of
distinct samples. ``X Xᵀ`` and ``Xᵀ X`` share their non-zero eigenvalues, so when ``D < N``
the ``(D, D)`` matrix is used, accumulated over row blocks; ``(N, N)`` only when ``N <= D``.

**Support size** (Arora & Zhang 2017, "Do GANs learn the distribution?"): ``s`` samples from a
uniform support of size ``S`` hold ``C(s, 2) / S`` colliding pairs on average, so
``Ŝ = C(s, 2) / #pairs``. For a distribution ``p`` the mean is ``C(s, 2) Σ p²``: ``Ŝ`` estimates
the collision (Rényi-2) support ``1 / Σ p²``, which is ``S`` when uniform and less otherwise.
Near-duplicates (Euclidean distance strictly below a threshold, e.g. the collapse threshold
calibrated on training data) are counted by FAISS range search over ``block_size²`` tiles of
the upper triangle: never an ``N × N`` matrix.

The interval inverts an exact (Garwood) Poisson interval for the mean pair count. Collisions
from a uniform support are pairwise independent (``P(x_i = x_j = x_k) = 1/S²``), so the
count's variance is ``C(s, 2)(1/S)(1 - 1/S)``, at most Poisson's: the interval is calibrated
(slightly conservative) there. For a skewed ``p`` pairs sharing a sample are positively
correlated and the interval is too narrow: it is approximate. (A bootstrap over samples is
no alternative: drawing samples with replacement makes collisions of its own.)
"""
from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np

from ganaudit.metrics.copy_stats import binomial_ci
from ganaudit.features import as_features


_GRAM_BLOCK_ROWS = 4096
DEFAULT_PAIR_BLOCK_SIZE = 2048  # worst case (all pairs close): ~12 bytes × block² per tile


def _rows_float64(x: np.ndarray, normalize: bool) -> np.ndarray:
    """Rows as float64; with ``normalize`` unit length, plus one column for zero rows.

    Cosine similarity is undefined for an all-zero row (a black image, a blank generator), so
    the convention is explicit: two zero rows are identical (similarity 1), a zero row and any
    other row are unrelated (similarity 0). An extra column that is 1 for zero rows and 0 for
    the others gives exactly those inner products, so every kernel here stays ``X Xᵀ``.
    """
    rows = x.astype(np.float64)
    if not normalize:
        return rows
    norms = np.linalg.norm(rows, axis=1)
    zero = norms == 0
    rows /= np.where(zero, 1.0, norms)[:, None]
    return np.hstack([rows, zero[:, None].astype(np.float64)])


def _feature_gram(x: np.ndarray, normalize: bool) -> np.ndarray:
    """``Xᵀ X``, ``(D', D')`` float64 (``D' = D + 1`` with ``normalize``), over row blocks."""
    width = x.shape[1] + (1 if normalize else 0)
    gram = np.zeros((width, width), dtype=np.float64)
    for start in range(0, x.shape[0], _GRAM_BLOCK_ROWS):
        rows = _rows_float64(x[start : start + _GRAM_BLOCK_ROWS], normalize)
        gram += rows.T @ rows
    return gram


def _sample_gram(x: np.ndarray, normalize: bool) -> np.ndarray:
    """``X Xᵀ``, the ``(N, N)`` kernel matrix: only for ``N <= D``."""
    rows = _rows_float64(x, normalize)
    return rows @ rows.T


def _vendi_from_gram(gram: np.ndarray) -> float:
    """``exp`` of the Shannon entropy of the eigenvalues of ``gram / trace(gram)``."""
    trace = float(np.trace(gram))
    if not trace > 0:
        raise ValueError("features are all zero: the similarity matrix has no mass")
    w = np.linalg.eigvalsh((gram + gram.T) / (2.0 * trace))
    # Eigenvalues at rounding level are zeros of a rank-deficient matrix.
    w = w[w > w.shape[0] * np.finfo(np.float64).eps * max(w.max(), 0.0)]
    return float(np.exp(-(w * np.log(w)).sum()))


def vendi_score(features: np.ndarray, normalize: bool = True) -> float:
    """Vendi score: the effective number of distinct samples (higher is more diverse).

    ``K`` is the cosine-similarity matrix (``normalize=True``, the paper's setting, as the
    ``vendi_score`` package's ``score_X``) or the linear kernel ``X Xᵀ`` (``normalize=False``).
    Eigenvalues are of ``K / trace(K)``, which is ``K / N`` whenever ``k(x, x) = 1``; for the
    unnormalised linear kernel this makes the score independent of the features' scale.

    Args:
        features: ``(N, D)`` float32 features, ``N >= 1``.
        normalize: L2-normalise the rows first (cosine similarity; all-zero rows are similar
            to each other only, see ``_rows_float64``). Without it, all-zero features are an
            error (the linear kernel has no mass).

    Returns:
        A float in ``[1, min(N, D)]``. Cost ``N·D²`` (``N²·D`` when ``N <= D``); memory
        ``min(N, D)²`` floats.

    Example:
        >>> x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 clusters of 4
        >>> round(vendi_score(x), 9)
        3.0
    """
    x = as_features(features, "features")
    n, d = x.shape
    width = d + (1 if normalize else 0)
    gram = _feature_gram(x, normalize) if width < n else _sample_gram(x, normalize)
    return _vendi_from_gram(gram)


def vendi_per_mode(
    features: np.ndarray, labels: np.ndarray, normalize: bool = True
) -> dict[Hashable, float]:
    """Vendi score of the samples of each mode (label) separately.

    Args:
        features: ``(N, D)`` float32 features.
        labels: ``(N,)`` mode of each sample (integers or strings).
        normalize: as :func:`vendi_score`.

    Returns:
        ``{label: score}`` for each label present, in sorted label order; labels are
        Python scalars (``int``/``str``).
    """
    x = as_features(features, "features")
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"labels must be a 1-D array of {x.shape[0]} entries (one per sample), "
            f"got shape {labels.shape}"
        )
    return {
        label.item(): vendi_score(x[labels == label], normalize) for label in np.unique(labels)
    }


def _check_int(value: int, name: str, low: int, high: float = math.inf) -> int:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _check_threshold(threshold: float) -> float:
    is_number = isinstance(threshold, (int, float, np.integer, np.floating))
    if not is_number or isinstance(threshold, bool) or not 0 <= threshold < math.inf:
        raise ValueError(f"threshold must be a finite distance >= 0, got {threshold!r}")
    return float(threshold)


def _close_pair_counts(
    x: np.ndarray, radius_sq: float, block_size: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Per group, the pairs ``i < j`` of that group with squared distance ``< radius_sq``.

    ``groups`` is a non-decreasing ``(N,)`` int array (None: one group). The search runs
    over upper-triangle ``block_size`` tiles and skips tiles that share no group.
    """
    import faiss

    n = x.shape[0]
    groups = np.zeros(n, dtype=np.int64) if groups is None else groups
    counts = np.zeros(int(groups[-1]) + 1, dtype=np.int64)
    indexes = []
    for start in range(0, n, block_size):
        indexes.append(faiss.IndexFlatL2(x.shape[1]))
        indexes[-1].add(x[start : start + block_size])
    for q0 in range(0, n, block_size):
        q1 = min(q0 + block_size, n)
        for d0 in range(q0, n, block_size):
            if groups[d0] > groups[q1 - 1]:
                break  # sorted groups: no later tile shares one with these queries
            lims, _, idx = indexes[d0 // block_size].range_search(x[q0:q1], radius_sq)
            rows = np.repeat(np.arange(q0, q1), np.diff(lims.astype(np.int64)))
            cols = idx + d0
            keep = (cols > rows) & (groups[rows] == groups[cols])  # each pair once, no self
            counts += np.bincount(groups[rows[keep]], minlength=counts.shape[0])
    return counts


def count_close_pairs(
    features: np.ndarray, threshold: float, block_size: int = DEFAULT_PAIR_BLOCK_SIZE
) -> int:
    """Number of unordered sample pairs closer than ``threshold`` (strictly).

    Args:
        features: ``(N, D)`` float32 features, ``N >= 2``.
        threshold: Euclidean distance, e.g. from
            :func:`ganaudit.metrics.coverage.collapse_threshold`.
        block_size: rows per tile; memory is at most ~12 bytes × ``block_size²`` per tile
            even when every pair is close.

    Returns:
        The pair count, an int in ``[0, N (N - 1) / 2]``. Distances are FAISS float32
        (``|x|² + |y|² - 2 x·y``), so pairs within rounding of the threshold may go either way.
    """
    x = as_features(features, "features", min_rows=2)
    threshold = _check_threshold(threshold)
    block_size = _check_int(block_size, "block_size", 1)
    return int(_close_pair_counts(x, float(np.float32(threshold) ** 2), block_size)[0])


def _poisson_ci(k: int, confidence: float) -> tuple[float, float]:
    """Exact (Garwood) two-sided interval for the mean of a Poisson count ``k``."""
    from scipy.special import gammaincinv

    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(gammaincinv(k, tail))
    return low, float(gammaincinv(k + 1, 1.0 - tail))


def _check_confidence(confidence: float) -> float:
    is_number = isinstance(confidence, (float, np.floating))
    if not is_number or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def support_size_from_pair_count(
    n_pairs: int, n_samples: int, confidence: float = 0.95
) -> dict[str, float | int | bool]:
    """Birthday-paradox support size from a count of colliding pairs.

    Args:
        n_pairs: colliding (near-duplicate) pairs among the samples, ``>= 0``.
        n_samples: samples searched, ``s >= 2``.
        confidence: two-sided level of the interval, in (0, 1).

    Returns:
        dict with ``estimate`` (``C(s, 2) / n_pairs``), ``ci_low``, ``ci_high`` (floats),
        ``n_pairs``, ``n_samples`` (ints) and ``lower_bound_only`` (bool). With no pair the
        support is only bounded below: ``estimate = ci_low = C(s, 2) / upper Poisson
        limit of 0`` (``C(s,2) / 3.69`` at 95%), ``ci_high = inf``, ``lower_bound_only``.
    """
    n_samples = _check_int(n_samples, "n_samples", 2)
    n_pairs = _check_int(n_pairs, "n_pairs", 0, n_samples * (n_samples - 1) // 2)
    low, high = _poisson_ci(n_pairs, _check_confidence(confidence))
    all_pairs = n_samples * (n_samples - 1) / 2.0
    lower_bound_only = n_pairs == 0
    ci_low = all_pairs / high
    return {
        "estimate": ci_low if lower_bound_only else all_pairs / n_pairs,
        "ci_low": ci_low,
        "ci_high": math.inf if lower_bound_only else all_pairs / low,
        "n_pairs": n_pairs,
        "n_samples": n_samples,
        "lower_bound_only": lower_bound_only,
    }


def support_size(
    features: np.ndarray,
    threshold: float,
    confidence: float = 0.95,
    block_size: int = DEFAULT_PAIR_BLOCK_SIZE,
) -> dict[str, float | int | bool]:
    """How many distinct images the generator produces, from near-duplicate pairs.

    Args:
        features: ``(s, D)`` float32 features of independently generated samples, ``s >= 2``.
        threshold: Euclidean distance below which two samples are the same image (the
            collapse threshold calibrated on training data).
        confidence: two-sided level of the interval.
        block_size: rows per search tile (see :func:`count_close_pairs`).

    Returns:
        The dict of :func:`support_size_from_pair_count`. Cost ``s²·D / 2``; pass a
        subsample for very large ``s``. Real data has near-duplicates at a calibrated
        threshold too: compare with the same estimate on as many training samples.
    """
    _check_confidence(confidence)
    n_pairs = count_close_pairs(features, threshold, block_size)
    return support_size_from_pair_count(n_pairs, np.shape(features)[0], confidence)


def _support_from_probability(p: float, batch_size: int) -> float:
    """``S`` with ``P(a batch has a collision) = 1 - exp(-C(s, 2) / S)`` equal to ``p``."""
    if p <= 0.0:
        return math.inf
    if p >= 1.0:
        return 0.0
    return batch_size * (batch_size - 1) / 2.0 / -math.log1p(-p)


def birthday_batch_test(
    features: np.ndarray,
    threshold: float,
    batch_size: int,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int | bool]:
    """The paper's protocol: the share of batches of ``s`` samples holding a near-duplicate.

    The samples are shuffled (seeded) into ``N // s`` disjoint batches; the rest is unused.
    Arora & Zhang read a probability near 1/2 as a support of about ``s²``; here the
    probability is turned into ``S`` with the Poisson approximation
    ``P = 1 - exp(-C(s, 2) / S)``, and its Clopper–Pearson interval into ``(ci_low, ci_high)``.

    Args:
        features: ``(N, D)`` float32 features, ``N >= batch_size``.
        threshold: near-duplicate distance, as :func:`support_size`.
        batch_size: ``s``, ``2 <= s <= N``.
        seed: seed of the shuffle.
        confidence: two-sided level of the intervals.

    Returns:
        dict with ``batch_size``, ``n_batches``, ``n_batches_with_duplicate`` (ints),
        ``duplicate_probability``, ``probability_ci_low``, ``probability_ci_high``,
        ``estimate``, ``ci_low``, ``ci_high`` (floats), ``lower_bound_only`` (no batch had a
        duplicate: ``estimate = ci_low``, ``ci_high = inf``) and ``upper_bound_only`` (every
        batch had one: ``estimate = ci_high``, ``ci_low = 0``).
    """
    x = as_features(features, "features", min_rows=2)
    radius_sq = float(np.float32(_check_threshold(threshold)) ** 2)
    s = _check_int(batch_size, "batch_size", 2, x.shape[0])
    n_batches = x.shape[0] // s
    order = np.random.default_rng(seed).permutation(x.shape[0])[: n_batches * s]
    batch_of = np.arange(n_batches * s) // s  # batch b: rows b*s .. (b+1)*s of x[order]
    pairs = _close_pair_counts(x[order], radius_sq, DEFAULT_PAIR_BLOCK_SIZE, batch_of)
    hits = int(np.count_nonzero(pairs))
    p_low, p_high = binomial_ci(hits, n_batches, _check_confidence(confidence))
    ci_low, ci_high = _support_from_probability(p_high, s), _support_from_probability(p_low, s)
    estimate = _support_from_probability(hits / n_batches, s)
    return {
        "batch_size": s, "n_batches": n_batches, "n_batches_with_duplicate": hits,
        "duplicate_probability": hits / n_batches,
        "probability_ci_low": p_low, "probability_ci_high": p_high,
        "estimate": ci_low if hits == 0 else ci_high if hits == n_batches else estimate,
        "ci_low": ci_low, "ci_high": ci_high,
        "lower_bound_only": hits == 0, "upper_bound_only": hits == n_batches,
    }
