"""Latent-recovery membership figures: the train-versus-holdout AUC, its interval, the flags.

Latent recovery (GAN-Leaks white-box attack, Chen et al. 2020; Webster et al. 2019)
optimises a latent ``z`` so that ``G(z)`` reconstructs a given image; ``ganaudit.search.recovery``
does that and leaves one reconstruction distance per image. A generator that memorised its
training set reconstructs training images better (smaller distance) than unseen images of
the same distribution. Everything here works on those distances: pure functions, no I/O.

Argument order is always ``(train, holdout)``: members first.
"""
from __future__ import annotations

import math

import numpy as np

from ganaudit.metrics import copy_stats


def _distances(values: np.ndarray, name: str) -> np.ndarray:
    d = np.asarray(values, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of distances, got shape {d.shape}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative distances")
    return d


def recovery_auc(train_distances: np.ndarray, holdout_distances: np.ndarray) -> float:
    """ROC AUC of telling training from held-out images by reconstruction distance.

    The probability that a training image is reconstructed closer than a held-out one (ties
    count 1/2): 0.5 when the generator treats both alike, near 1 when it memorised its
    training images. Equal to ``sklearn.metrics.roc_auc_score`` with members as positives
    and the negated distance as the score.

    Args:
        train_distances: ``(m,)`` reconstruction distance of each training image.
        holdout_distances: ``(n,)`` the same for held-out images.
    """
    train = _distances(train_distances, "train_distances")
    holdout = _distances(holdout_distances, "holdout_distances")
    return copy_stats.rank_auc(-train, -holdout)


def auc_confidence_interval(auc: float, n_positive: int, n_negative: int,
                            confidence: float = 0.95) -> tuple[float, float]:
    """Score (Wilson-type) interval for an AUC: Newcombe (2006), method 5.

    The interval is every ``θ`` with ``(auc - θ)² <= z² V(θ)``, where ``V(θ)`` is the
    Hanley–McNeil (1982) variance of an AUC of ``θ`` with ``N* = (m + n) / 2`` in place of
    both sample sizes::

        V(θ) = θ (1 - θ) [1 + (N* - 1)(1 - θ)/(2 - θ) + (N* - 1) θ/(1 + θ)] / (m n)

    Unlike a Wald interval (DeLong's variance around the estimate) it does not collapse to a
    point at AUC 0 or 1, which small samples of a memorising generator reach; its coverage is
    close to nominal from about 10 images per class (Newcombe's simulations, and
    ``tests/test_recovery.py`` on binormal data with a known AUC).

    Args:
        auc: the observed AUC in [0, 1].
        n_positive, n_negative: the two sample sizes (``m``, ``n``), each >= 1.
        confidence: two-sided level in (0, 1).

    Returns:
        ``(low, high)`` with ``0 <= low <= auc <= high <= 1``.
    """
    from scipy.special import ndtri

    if not (isinstance(auc, (int, float)) and 0.0 <= auc <= 1.0):
        raise ValueError(f"auc must lie in [0, 1], got {auc!r}")
    m, n = int(n_positive), int(n_negative)
    if m < 1 or n < 1:
        raise ValueError(f"need at least one image of each kind, got {m} and {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    z2 = float(ndtri(0.5 + confidence / 2.0)) ** 2
    half = (m + n) / 2.0

    def excess(theta: float) -> float:  # <= 0 inside the interval
        v = theta * (1 - theta) * (1 + (half - 1) * (1 - theta) / (2 - theta) + (half - 1) * theta / (1 + theta))
        return (auc - theta) ** 2 - z2 * v / (m * n)

    def boundary(outside: float, inside: float) -> float:
        if excess(outside) <= 0:
            return outside
        for _ in range(60):  # bisection to 2**-60 of the bracket
            mid = (outside + inside) / 2.0
            if excess(mid) <= 0:
                inside = mid
            else:
                outside = mid
        return inside

    return boundary(0.0, float(auc)), boundary(1.0, float(auc))


def recovery_flags(train_distances: np.ndarray, holdout_distances: np.ndarray, alpha: float,
                   fdr_q: float = 0.05) -> dict:
    """Each training image's recovery judged against the held-out images' (conformal).

    The held-out distances are the reference of images the generator never saw, exactly as
    holdout scores calibrate copy search (``ganaudit.metrics.copy_stats``): a training image
    gets the p-value ``(1 + #{holdout <= d}) / (n + 1)`` and is flagged when it is at most
    ``alpha``, i.e. when its distance is below the ``floor(alpha (n + 1))``-th smallest
    held-out distance. For a generator that did not memorise, training and held-out
    distances are exchangeable and each training image is flagged with probability at most
    ``alpha``.

    Args:
        train_distances: ``(m,)`` reconstruction distances of training images.
        holdout_distances: ``(n,)`` of held-out images.
        alpha: false-flag rate in (0, 1).
        fdr_q: Benjamini–Hochberg level of the ``significant`` discoveries.

    Returns:
        ``{"p_values", "flagged", "significant", "threshold"}``: ``(m,)`` arrays and the
        distance threshold, which is None (and nothing is flagged) when ``n`` is below
        ``1 / alpha - 1``, too few to reach level ``alpha``.
    """
    train = _distances(train_distances, "train_distances")
    holdout = _distances(holdout_distances, "holdout_distances")
    p_values = copy_stats.empirical_p_values(train, holdout)
    try:
        threshold: float | None = copy_stats.calibrate_threshold(holdout, alpha)
    except ValueError:
        if not 0.0 < alpha < 1.0:
            raise
        threshold = None
    flagged = train < threshold if threshold is not None else np.zeros(train.size, dtype=bool)
    return {"p_values": p_values, "flagged": flagged, "threshold": threshold,
            "significant": copy_stats.benjamini_hochberg(p_values, q=fdr_q)}


def min_reference_for(alpha: float) -> int:
    """The fewest held-out images that can calibrate level ``alpha`` (``ceil(1 / alpha) - 1``)."""
    return math.ceil(1.0 / alpha - 1e-9) - 1
