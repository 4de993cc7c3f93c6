"""Fréchet distance (FID on Inception features) and kernel distance (KID) over features.

Layered like torch-fidelity: :func:`features_to_statistics` →
:func:`statistics_to_frechet_distance` → :func:`frechet_distance`, so precomputed training
statistics can be reused.

The matrix square root term uses one symmetric eigenvalue problem instead of
``scipy.linalg.sqrtm``: ``tr sqrt(Σ1 Σ2) = Σ_i sqrt(λ_i)`` with ``λ`` the eigenvalues of the
symmetric PSD matrix ``Lᵀ Σ2 L``, ``Σ1 = L Lᵀ`` its Cholesky factorisation (``Lᵀ Σ2 L`` is
similar to ``Σ1 Σ2``); when ``Σ1`` is singular, ``sqrt(Σ1) Σ2 sqrt(Σ1)`` from an
eigendecomposition of ``Σ1`` takes its place. It stays real and accurate for the
rank-deficient covariances of small sample sets, where ``sqrtm`` needs an ``eps`` on the
diagonal.

KID is the unbiased MMD² with the polynomial kernel ``k(x, y) = (γ x·y + coef0)^degree``
averaged over random subsets, as in torch-fidelity and clean-fid.
"""
from __future__ import annotations

import numpy as np

from ganaudit.features import as_features, check_same_dim

_BLOCK_ROWS = 4096
# Rows per block of the covariance's symmetric rank-k updates (a float64 buffer of
# 16384 x (D + 1): 268 MB at D = 2048; numpy.cov converts the whole array to float64).
_STATISTICS_BLOCK_ROWS = 16384


def features_to_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features, accumulated in float64 over row blocks.

    One pass over ``x``: each block, shifted by the mean of the first block ``c``, gets a
    column of ones appended, ``[x - c, 1]``; the symmetric rank-k update of that block
    (BLAS ``syrk``, half a GEMM) accumulates ``Σ (x - c)(x - c)ᵀ``, ``Σ (x - c)`` and the row
    count at once. With ``δ`` the mean of ``x - c``, ``μ = c + δ`` and
    ``Σ = (Σ (x - c)(x - c)ᵀ - n δδᵀ) / (n - 1)``; ``c`` is close to ``μ``, so ``n δδᵀ`` is a
    small correction and the result is as accurate as a two-pass centred computation.

    Args:
        x: ``(N, D)`` float32 features, ``N >= 2``.

    Returns:
        ``(mu, sigma)``: ``(D,)`` and ``(D, D)`` float64; the covariance is unbiased
        (divides by ``N - 1``), as ``numpy.cov`` in pytorch-fid.
    """
    x = as_features(x, "x", min_rows=2)
    n, dim = x.shape
    rows = min(n, _STATISTICS_BLOCK_ROWS)
    shift = x[:rows].mean(axis=0, dtype=np.float64)
    block = np.empty((rows, dim + 1), dtype=np.float64)
    block[:, dim] = 1.0
    total = np.zeros((dim + 1, dim + 1), dtype=np.float64)
    update = np.empty_like(total)
    for start in range(0, n, rows):
        part = x[start : start + rows]
        b = block[: part.shape[0]]
        np.subtract(part, shift, out=b[:, :dim])
        np.matmul(b.T, b, out=update)  # one buffer and its transpose: BLAS syrk
        total += update
    delta = total[:dim, dim] / n
    mu = shift + delta
    sigma = np.ascontiguousarray(total[:dim, :dim])
    sigma -= n * np.outer(delta, delta)
    sigma /= n - 1
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; tiny negative eigenvalues are clipped to 0."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _product_eigenvalues(sigma1: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """The eigenvalues of ``Σ1 Σ2`` (both symmetric PSD), from a symmetric matrix similar to it.

    ``Lᵀ Σ2 L`` with ``Σ1 = L Lᵀ`` (LAPACK ``potrf``, then two triangular products ``trmm``),
    or, when ``Σ1`` is not positive definite, ``sqrt(Σ1) Σ2 sqrt(Σ1)`` from an
    eigendecomposition of ``Σ1``. The eigensolvers read one triangle (the lower one).
    """
    from scipy.linalg import lapack  # here, not at import: scipy.linalg takes a while to load
    from scipy.linalg.blas import dtrmm

    # Symmetric inputs: a transpose is a Fortran-ordered view of the same matrix, no copy.
    lower, info = lapack.dpotrf(sigma1.T, lower=1, clean=0)
    if info == 0:
        middle = dtrmm(1.0, lower, sigma2.T, side=1, lower=1)  # Σ2 L
        middle = dtrmm(1.0, lower, middle, side=0, lower=1, trans_a=1, overwrite_b=1)  # Lᵀ Σ2 L
    else:  # not positive definite (singular covariance)
        root1 = _psd_sqrt(sigma1)
        middle = np.asfortranarray(root1 @ sigma2 @ root1)
    eigenvalues, _, count, _, info = lapack.dsyevr(middle, compute_v=0, lower=1, overwrite_a=1)
    if info != 0 or count != middle.shape[0]:  # not expected; numpy's driver as a fallback
        return np.linalg.eigvalsh(middle, UPLO="L")
    return eigenvalues[:count]


def _check_statistics(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: statistics contain NaN or infinite values")
    return mu, sigma


def statistics_to_frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``|mu1 - mu2|² + tr(Σ1) + tr(Σ2) - 2 tr sqrt(Σ1 Σ2)``, the last term through the
    eigenvalues of ``Lᵀ Σ2 L`` (``Σ1 = L Lᵀ``), or of ``sqrt(Σ1) Σ2 sqrt(Σ1)`` when ``Σ1`` is
    singular.

    Args:
        mu1: ``(D,)`` mean of the real features.
        sigma1: ``(D, D)`` covariance of the real features (symmetric PSD).
        mu2: ``(D,)`` mean of the generated features.
        sigma2: ``(D, D)`` covariance of the generated features (symmetric PSD).

    Returns:
        The squared Fréchet distance (what FID reports), a float ``>= 0`` up to rounding.
    """
    mu1, sigma1 = _check_statistics(mu1, sigma1, "first")
    mu2, sigma2 = _check_statistics(mu2, sigma2, "second")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: D={mu1.shape[0]} and D={mu2.shape[0]}")
    # Symmetrise: covariances from files or other tools can be asymmetric by rounding.
    sigma1, sigma2 = sigma1 + sigma1.T, sigma2 + sigma2.T
    sigma1 *= 0.5  # exact: a symmetric input comes back unchanged
    sigma2 *= 0.5
    eigenvalues = _product_eigenvalues(sigma1, sigma2)
    # Eigenvalues below rounding level (the matrix_rank tolerance) are zeros of a
    # rank-deficient product: their square roots would add noise of order sqrt(eps).
    tol = eigenvalues.shape[0] * np.finfo(np.float64).eps * max(eigenvalues.max(), 0.0)
    tr_covmean = np.sqrt(eigenvalues[eigenvalues > tol]).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to real and generated features (FID).

    Args:
        real: ``(N, D)`` float32 real features, ``N >= 2``.
        fake: ``(M, D)`` float32 generated features, ``M >= 2``.

    Returns:
        The squared Fréchet distance, a float.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
        >>> abs(frechet_distance(x, x)) < 1e-9
        True
    """
    real = as_features(real, "real", min_rows=2)
    fake = as_features(fake, "fake", min_rows=2)
    check_same_dim(real=real, fake=fake)
    if min(real.shape[0], fake.shape[0]) < real.shape[1]:
        return _frechet_distance_low_rank(real, fake)
    return statistics_to_frechet_distance(*features_to_statistics(real), *features_to_statistics(fake))


def _frechet_distance_low_rank(real: np.ndarray, fake: np.ndarray) -> float:
    """The same value through the samples when there are fewer samples than dimensions.

    With centred data ``A`` (N, D) and ``B`` (M, D), ``Σ1 Σ2`` has the non-zero eigenvalues of
    ``(A Bᵀ)(B Aᵀ) / ((N-1)(M-1))``, so ``tr sqrt(Σ1 Σ2)`` is the sum of the singular values of
    the ``(N, M)`` matrix ``A Bᵀ`` over ``sqrt((N-1)(M-1))``: no ``(D, D)`` eigendecomposition
    (cost ``N·M·D`` instead of ``D³``).
    """
    a = real.astype(np.float64)
    b = fake.astype(np.float64)
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    a -= mu1
    b -= mu2
    n, m = a.shape[0], b.shape[0]
    singular = np.linalg.svd(a @ b.T, compute_uv=False)
    tol = max(n, m) * np.finfo(np.float64).eps * max(singular.max(initial=0.0), 0.0)
    tr_covmean = singular[singular > tol].sum() / np.sqrt((n - 1) * (m - 1))
    diff = mu1 - mu2
    tr1 = np.einsum("ij,ij->", a, a) / (n - 1)
    tr2 = np.einsum("ij,ij->", b, b) / (m - 1)
    return float(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean)


def _polynomial_kernel_sum(
    a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef0: float
) -> float:
    """Sum of ``(gamma a·b + coef0)^degree`` over all row pairs, in row blocks (float64)."""
    total = 0.0
    for start in range(0, a.shape[0], _BLOCK_ROWS):
        k = a[start : start + _BLOCK_ROWS] @ b.T
        k *= gamma
        k += coef0
        total += float((k**degree).sum())
    return total


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    """Unbiased MMD² of equal-size float64 samples ``x``, ``y``: off-diagonal within-set
    kernel means minus twice the full cross-kernel mean (torch-fidelity's estimator)."""
    m = x.shape[0]
    diag_x = ((gamma * np.einsum("ij,ij->i", x, x) + coef0) ** degree).sum()
    diag_y = ((gamma * np.einsum("ij,ij->i", y, y) + coef0) ** degree).sum()
    k_xx = _polynomial_kernel_sum(x, x, degree, gamma, coef0) - diag_x
    k_yy = _polynomial_kernel_sum(y, y, degree, gamma, coef0) - diag_y
    k_xy = _polynomial_kernel_sum(x, y, degree, gamma, coef0)
    return (k_xx + k_yy) / (m * (m - 1)) - 2.0 * k_xy / (m * m)


def _check_kid_args(num_subsets: int, subset_size: int, degree: int) -> None:
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    if degree < 1 or int(degree) != degree:
        raise ValueError(f"degree must be a positive integer, got {degree}")


def kernel_distance_subsets(
    real: np.ndarray,
    fake: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Unbiased polynomial-kernel MMD² on each of ``num_subsets`` random subset pairs.

    Each subset draws ``min(subset_size, N, M)`` rows of each set without replacement.

    Args:
        real: ``(N, D)`` float32 real features.
        fake: ``(M, D)`` float32 generated features.
        num_subsets: number of subset pairs, ``>= 1``.
        subset_size: rows per subset, ``>= 2``.
        degree: polynomial degree, ``>= 1``.
        gamma: kernel scale; ``1 / D`` when None.
        coef0: kernel offset.
        seed: seed of the subset draws.

    Returns:
        ``(num_subsets,)`` float64 MMD² estimates.
    """
    real = as_features(real, "real", min_rows=2)
    fake = as_features(fake, "fake", min_rows=2)
    check_same_dim(real=real, fake=fake)
    _check_kid_args(num_subsets, subset_size, degree)
    gamma = 1.0 / real.shape[1] if gamma is None else float(gamma)
    m = min(subset_size, real.shape[0], fake.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = real[rng.choice(real.shape[0], m, replace=False)].astype(np.float64)
        y = fake[rng.choice(fake.shape[0], m, replace=False)].astype(np.float64)
        values[i] = _unbiased_mmd2(x, y, int(degree), gamma, coef0)
    return values


def kernel_distance(
    real: np.ndarray,
    fake: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> float:
    """Kernel distance (KID): the mean over subsets of the unbiased polynomial MMD².

    Args:
        real: ``(N, D)`` float32 real features.
        fake: ``(M, D)`` float32 generated features.
        num_subsets: number of random subset pairs.
        subset_size: rows per subset (capped at ``min(N, M)``).
        degree: polynomial degree.
        gamma: kernel scale; ``1 / D`` when None.
        coef0: kernel offset.
        seed: seed of the subset draws.

    Returns:
        KID as a float (can be slightly negative: the estimator is unbiased).
    """
    return float(
        kernel_distance_subsets(
            real, fake, num_subsets, subset_size, degree, gamma, coef0, seed
        ).mean()
    )


def extrapolate_in_inverse_n(sizes: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares line ``value = intercept + slope / N`` through ``(sizes, values)``.

    Args:
        sizes: ``(K,)`` sample sizes ``N > 0``, at least two distinct.
        values: ``(K,)`` the statistic at each size.

    Returns:
        ``(intercept, slope)``: the intercept is the value extrapolated to ``N → ∞``.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if sizes.ndim != 1 or sizes.shape != values.shape:
        raise ValueError(f"sizes and values must be 1-D of equal length, got {sizes.shape} and {values.shape}")
    if (sizes <= 0).any() or len(np.unique(sizes)) < 2:
        raise ValueError("need at least two distinct positive sample sizes")
    design = np.stack([np.ones_like(sizes), 1.0 / sizes], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, values, rcond=None)
    return float(intercept), float(slope)


def fid_infinity(real, fake: np.ndarray, num_points: int = 15, min_fraction: float = 0.1, seed: int = 0) -> dict:
    """FD extrapolated to infinitely many generated samples (Chong & Forsyth 2020, "FID∞").

    FD is biased upward at a finite sample size ``N``, by a term close to ``c / N``. Following
    the paper: FD is computed on ``num_points`` random subsets of the generated features, of
    sizes evenly spaced from ``min_fraction · M`` to ``M`` (the paper: 5,000 to 50,000), each
    a fresh draw without replacement, against the fixed reference; a least-squares line in
    ``1 / N`` is extrapolated to ``1 / N = 0``.

    Args:
        real: the reference: ``(N, D)`` float32 features, or their statistics ``(mu, sigma)``,
            ``(D,)`` and ``(D, D)``.
        fake: ``(M, D)`` float32 generated features, ``M >= 4``.
        num_points: number of subset sizes, ``>= 2``.
        min_fraction: smallest subset as a fraction of ``M``, in (0, 1).
        seed: seed of the subset draws.

    Returns:
        ``{"value", "slope", "sizes", "fd"}``: FID∞, the fitted slope (``c``), the subset sizes
        and the FD at each.
    """
    fake = as_features(fake, "fake", min_rows=4)
    if num_points < 2 or not 0.0 < min_fraction < 1.0:
        raise ValueError(f"need num_points >= 2 and min_fraction in (0, 1), got {num_points} and {min_fraction}")
    if isinstance(real, tuple):
        real_stats = real
        def fd_of(subset):
            return statistics_to_frechet_distance(*real_stats, *features_to_statistics(subset))
    else:
        real = as_features(real, "real", min_rows=2)
        def fd_of(subset):  # the (N, M) route when there are fewer samples than dimensions
            return frechet_distance(real, subset)
    m = fake.shape[0]
    sizes = np.unique(np.linspace(max(2, int(min_fraction * m)), m, num_points).astype(np.int64))
    rng = np.random.default_rng(seed)
    values = [fd_of(fake[rng.permutation(m)[:size]]) for size in sizes]
    intercept, slope = extrapolate_in_inverse_n(sizes, np.array(values))
    return {"value": intercept, "slope": slope, "sizes": sizes.tolist(), "fd": [float(v) for v in values]}
