"""Inception Score (Salimans et al. 2016, "Improved techniques for training GANs").

``IS = exp(E_x KL(p(y|x) || p(y)))`` where ``p(y|x)`` is a classifier's softmax over its
classes and ``p(y)`` the mean of ``p(y|x)`` over the samples of a split. The protocol is
torch-fidelity's (``isc_features_to_metric``), which reproduces the original TensorFlow code:

* softmax over *all* classes given (the FID Inception network's 1008 logits; nothing dropped);
* ``splits`` contiguous chunks, chunk ``i`` being rows ``i*N//splits`` to ``(i+1)*N//splits``,
  in the order given (torch-fidelity shuffles with a fixed seed first; shuffle before calling
  to reproduce that);
* the score of each chunk, then their mean and population standard deviation.

torch-fidelity and torchmetrics feed it the Inception ``logits_unbiased`` layer (the final
fully connected layer without its bias), as the original code did; pass those logits to
compare figures with papers.

Everything is computed in float64 from log-probabilities (log-softmax), one split at a time,
so large logits neither overflow nor lose the small probabilities.
"""
from __future__ import annotations

import numpy as np

from ganaudit.features import as_features, check_count


DEFAULT_SPLITS = 10
# Largest accepted |row sum - 1| of given probabilities (float32 softmax rounds to ~1e-6).
_PROBABILITY_SUM_ATOL = 1e-3


def _check_splits(splits: int, n_samples: int) -> int:
    splits = check_count(splits, "splits")
    if splits > n_samples:
        raise ValueError(f"splits={splits} needs at least {splits} samples, got {n_samples}")
    return int(splits)


def _check_probabilities(p: np.ndarray) -> None:
    if (p < 0).any():
        raise ValueError("probabilities must be >= 0 (pass from_logits=True for logits)")
    worst = float(np.abs(p.sum(axis=1, dtype=np.float64) - 1.0).max())
    if worst > _PROBABILITY_SUM_ATOL:
        raise ValueError(
            f"probability rows must sum to 1, one is off by {worst:.3g} "
            "(pass from_logits=True for logits)"
        )


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    peak = a.max(axis=axis, keepdims=True)
    return np.squeeze(peak, axis=axis) + np.log(np.exp(a - peak).sum(axis=axis))


def _split_score(chunk: np.ndarray, from_logits: bool) -> float:
    """``exp(mean KL(p(y|x) || p(y)))`` of one ``(n, C)`` chunk, in float64."""
    chunk = chunk.astype(np.float64)
    if from_logits:
        log_p = chunk - _logsumexp(chunk, axis=1)[:, None]
        p = np.exp(log_p)
        log_q = _logsumexp(log_p, axis=0) - np.log(chunk.shape[0])
    else:
        p = chunk / chunk.sum(axis=1, keepdims=True)
        # log 0 replaced by 0: those terms are multiplied by p = 0 (and q = 0 only if every
        # p of the class is 0), so they contribute exactly 0 instead of NaN.
        log_p = np.log(np.where(p > 0, p, 1.0))
        q = p.mean(axis=0)
        log_q = np.log(np.where(q > 0, q, 1.0))
    kl = (p * (log_p - log_q)).sum(axis=1)
    return float(np.exp(kl.mean()))


def inception_score_splits(
    logits_or_probs: np.ndarray, splits: int = DEFAULT_SPLITS, from_logits: bool = True
) -> np.ndarray:
    """Inception Score of each of ``splits`` contiguous chunks of the samples.

    Args:
        logits_or_probs: ``(N, C)`` float array of class logits (``from_logits=True``) or
            class probabilities whose rows sum to 1 (``from_logits=False``).
        splits: number of chunks, ``1 <= splits <= N``; chunk ``i`` holds rows
            ``i*N//splits`` to ``(i+1)*N//splits``.
        from_logits: whether the input is logits (softmax applied here) or probabilities.

    Returns:
        ``(splits,)`` float64 scores, each in ``[1, C]``.
    """
    x = as_features(logits_or_probs, "logits_or_probs")
    splits = _check_splits(splits, x.shape[0])
    if not from_logits:
        _check_probabilities(x)
    n = x.shape[0]
    bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]
    return np.array([_split_score(x[a:b], from_logits) for a, b in bounds], dtype=np.float64)


def inception_score(
    logits_or_probs: np.ndarray, splits: int = DEFAULT_SPLITS, from_logits: bool = True
) -> tuple[float, float]:
    """Inception Score: mean and standard deviation over splits (higher is better).

    Args:
        logits_or_probs: ``(N, C)`` float array, e.g. the ``(N, 1008)`` float32 logits of
            the FID Inception network, or probabilities with ``from_logits=False``.
        splits: number of contiguous chunks, ``1 <= splits <= N`` (10 in the literature).
        from_logits: whether the input is logits or probabilities.

    Returns:
        ``(mean, std)`` floats; the std is the population std over splits (``numpy.std``),
        as torch-fidelity reports. The mean lies in ``[1, C]``.

    Example:
        >>> inception_score(np.zeros((100, 1008), dtype=np.float32))  # uniform predictions
        (1.0, 0.0)
    """
    scores = inception_score_splits(logits_or_probs, splits, from_logits)
    return float(scores.mean()), float(scores.std())
