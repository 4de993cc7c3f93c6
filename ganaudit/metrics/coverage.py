"""Coverage of the real distribution by generated samples, and collapse among the samples.

Precision, recall, density and coverage (Kynkäänniemi et al. 2019; Naeem et al. 2020) with
the definitions, argument order and tie handling of ``prdc.compute_prdc`` (prdc 0.2), but
without its dense N×M distance matrices:

* every distance is first a float32 GEMM tile (``block_size × block_size``); the k-NN radii
  walk the upper triangle of each self-distance matrix, so each pair is computed once;
* a rigorous bound on the float32 error (:mod:`ganaudit.metrics.tiles`) says which comparisons
  the float32 value cannot decide: only those pairs (8e-5 of them on 8,000 × 8,000 Gaussian
  features, 2048-d) are recomputed in float64 and rounded to float32 exactly as
  scikit-learn does for prdc (and about 1.6 distances per point for the radii), so
  the radii equal prdc's to the last bit and every ``<`` comparison agrees with it.

The layers can be called separately: :func:`knn_radii` (reusable per set and per k) →
:func:`prdc_from_radii` → :func:`prdc`.

Collapse among generated samples is measured against the real data:
:func:`collapse_threshold` is a low quantile of real leave-one-out nearest-neighbour
distances, :func:`duplicate_fraction` the share of generated samples with another generated
sample closer than that, and :func:`nn_distance_summary` compares typical nearest-neighbour
distances of both sets.
"""
from __future__ import annotations

import numpy as np

from ganaudit.features import as_features, check_count, check_same_dim
from ganaudit.search.index import knn
from ganaudit.metrics import tiles

DEFAULT_BLOCK_SIZE = 4096


def knn_radii(x: np.ndarray, nearest_k: int = 5, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Distance from each sample to its ``nearest_k``-th nearest other sample.

    This is prdc's radius: the (k+1)-th smallest distance counting the point itself, i.e.
    the k-th nearest *other* point (0 when the point has k exact duplicates).

    Computed from float32 tiles with exact float64 rechecks
    (:func:`ganaudit.metrics.tiles.kth_neighbour_distances`): the k-th smallest of
    scikit-learn's rounded float64 distances over all other points, whatever the float32
    rounding.

    Args:
        x: ``(N, D)`` float32 features, ``N > nearest_k``.
        nearest_k: k of the k-NN balls.
        block_size: tile side of the self-distance GEMM (memory about ``5·block_size²``
            bytes).

    Returns:
        ``(N,)`` float32 radii.
    """
    check_count(nearest_k, "nearest_k")
    x = as_features(x, "x", min_rows=nearest_k + 1)
    return tiles.kth_neighbour_distances(x, nearest_k, block_size)


def _check_radii(real_radii, fake_radii, n_real: int, n_fake: int):
    real_radii = np.asarray(real_radii, dtype=np.float32)
    fake_radii = np.asarray(fake_radii, dtype=np.float32)
    if real_radii.shape != (n_real,) or fake_radii.shape != (n_fake,):
        raise ValueError(
            f"radii must have shapes ({n_real},) and ({n_fake},), "
            f"got {real_radii.shape} and {fake_radii.shape}"
        )
    return real_radii, fake_radii


def prdc_from_radii(
    real: np.ndarray,
    fake: np.ndarray,
    real_radii: np.ndarray,
    fake_radii: np.ndarray,
    nearest_k: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, float]:
    """Precision, recall, density and coverage from precomputed k-NN radii.

    Args:
        real: ``(N, D)`` float32 real features.
        fake: ``(M, D)`` float32 generated features.
        real_radii: ``(N,)`` float32, :func:`knn_radii` of ``real``.
        fake_radii: ``(M,)`` float32, :func:`knn_radii` of ``fake``.
        nearest_k: the k the radii were computed with (density divides by it).
        block_size: tile side for the real×fake distances (float32 tiles: memory about
            ``5·block_size²`` bytes).

    Returns:
        dict with float ``precision``, ``recall``, ``density``, ``coverage``.
    """
    check_count(nearest_k, "nearest_k")
    real, fake = as_features(real, "real"), as_features(fake, "fake")
    check_same_dim(real=real, fake=fake)
    real_radii, fake_radii = _check_radii(real_radii, fake_radii, real.shape[0], fake.shape[0])
    covering_reals, real_covered, real_recalled = tiles.in_ball_counts(real, fake, real_radii, fake_radii, block_size)
    # The same reductions as prdc's, so the same float64 roundings.
    return {
        "precision": float(np.mean(covering_reals > 0)),
        "recall": float(np.mean(real_recalled)),
        "density": float((1.0 / float(nearest_k)) * covering_reals.mean()),
        "coverage": float(np.mean(real_covered)),
    }


def prdc(
    real: np.ndarray,
    fake: np.ndarray,
    nearest_k: int = 5,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, float]:
    """Precision, recall, density and coverage of generated samples against real ones.

    Same definitions, argument order and results as ``prdc.compute_prdc(real, fake, k)``;
    memory is bounded by the block size instead of ``N × M``.

    Args:
        real: ``(N, D)`` float32 real (training) features, ``N > nearest_k``.
        fake: ``(M, D)`` float32 generated features, ``M > nearest_k``.
        nearest_k: k of the k-NN balls.
        block_size: tile side for the real×fake distances.

    Returns:
        dict with float ``precision``, ``recall``, ``density``, ``coverage``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 8)).astype(np.float32)
        >>> prdc(x, x, nearest_k=5)["coverage"]
        1.0
    """
    check_count(nearest_k, "nearest_k")
    real = as_features(real, "real", min_rows=nearest_k + 1)
    fake = as_features(fake, "fake", min_rows=nearest_k + 1)
    check_same_dim(real=real, fake=fake)
    real_radii = knn_radii(real, nearest_k, block_size)
    fake_radii = knn_radii(fake, nearest_k, block_size)
    return prdc_from_radii(real, fake, real_radii, fake_radii, nearest_k, block_size)


def leave_one_out_nn_distances(x: np.ndarray) -> np.ndarray:
    """Distance from each sample to its nearest *other* sample of the same set.

    Args:
        x: ``(N, D)`` float32 features, ``N >= 2``.

    Returns:
        ``(N,)`` float32 Euclidean distances.
    """
    x = as_features(x, "x", min_rows=2)
    dist, _ = knn(x, x, k=1, exclude_self=True)
    return dist[:, 0]


def _nn_distances(x, precomputed, name: str) -> np.ndarray:
    """Use precomputed leave-one-out NN distances when given, else compute them."""
    if precomputed is None:
        if x is None:
            raise ValueError(f"give either {name} features or {name}_nn_distances")
        return leave_one_out_nn_distances(as_features(x, name, min_rows=2))
    d = np.asarray(precomputed, dtype=np.float32)
    if d.ndim != 1 or d.shape[0] < 1:
        raise ValueError(f"{name}_nn_distances must be a non-empty 1-D array, got {d.shape}")
    if x is not None and np.shape(x)[0] != d.shape[0]:
        raise ValueError(
            f"{name}_nn_distances has {d.shape[0]} entries for {np.shape(x)[0]} {name} samples"
        )
    return d


def collapse_threshold(
    real: np.ndarray | None,
    quantile: float = 0.01,
    real_nn_distances: np.ndarray | None = None,
) -> float:
    """Distance below which two samples count as near-duplicates, calibrated on real data.

    It is the ``quantile`` of the real leave-one-out nearest-neighbour distances, so about
    ``quantile`` of real samples have a neighbour that close.

    Args:
        real: ``(N, D)`` float32 real features; may be None when ``real_nn_distances`` is
            given.
        quantile: in ``[0, 1]``.
        real_nn_distances: optional ``(N,)`` precomputed
            :func:`leave_one_out_nn_distances` of ``real``.

    Returns:
        The threshold, a Euclidean distance.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    d = _nn_distances(real, real_nn_distances, "real")
    return float(np.quantile(d.astype(np.float64), quantile))


def duplicate_fraction(
    fake: np.ndarray | None,
    threshold: float,
    fake_nn_distances: np.ndarray | None = None,
) -> float:
    """Fraction of generated samples whose nearest other generated sample is closer than
    ``threshold`` (strictly).

    Args:
        fake: ``(M, D)`` float32 generated features; may be None when
            ``fake_nn_distances`` is given.
        threshold: Euclidean distance, e.g. from :func:`collapse_threshold`.
        fake_nn_distances: optional ``(M,)`` precomputed leave-one-out NN distances.

    Returns:
        A fraction in ``[0, 1]``.
    """
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite distance >= 0, got {threshold}")
    d = _nn_distances(fake, fake_nn_distances, "fake")
    return float(np.mean(d < threshold))


def nn_distance_summary(
    real: np.ndarray | None,
    fake: np.ndarray | None,
    real_nn_distances: np.ndarray | None = None,
    fake_nn_distances: np.ndarray | None = None,
) -> dict[str, float]:
    """Typical generated→generated nearest-neighbour distance against real→real.

    A ratio well below 1 means generated samples crowd together (collapse); compare sets
    of similar size, since NN distances shrink as a set grows.

    Args:
        real: ``(N, D)`` float32 real features, or None with ``real_nn_distances``.
        fake: ``(M, D)`` float32 generated features, or None with ``fake_nn_distances``.
        real_nn_distances: optional ``(N,)`` precomputed leave-one-out NN distances.
        fake_nn_distances: optional ``(M,)`` precomputed leave-one-out NN distances.

    Returns:
        dict with float ``real_median_nn``, ``fake_median_nn`` and ``median_nn_ratio``
        (fake / real; ``inf`` when only the real median is 0, ``nan`` when both are).
    """
    if real is not None and fake is not None:
        check_same_dim(real=as_features(real, "real"), fake=as_features(fake, "fake"))
    real_med = float(np.median(_nn_distances(real, real_nn_distances, "real")))
    fake_med = float(np.median(_nn_distances(fake, fake_nn_distances, "fake")))
    if real_med > 0:
        ratio = fake_med / real_med
    else:  # all real samples have an exact duplicate
        ratio = float("inf") if fake_med > 0 else float("nan")
    return {"real_median_nn": real_med, "fake_median_nn": fake_med, "median_nn_ratio": ratio}
