import warnings

import numpy as np
import pytest

from ganaudit.metrics import fid
from ganaudit.metrics.fid import (
    features_to_statistics,
    frechet_distance,
    kernel_distance,
    kernel_distance_subsets,
    statistics_to_frechet_distance,
)

fid_score = pytest.importorskip("pytorch_fid.fid_score")


def _correlated(rng, n, d, scale=1.0, shift=0.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mixing * scale + shift).astype(np.float32)


@pytest.mark.parametrize(
    ("n", "d"),
    [(500, 16), (2000, 64), (300, 128), (40, 64), (100, 300)],  # the last two: N < D
)
def test_frechet_distance_equals_pytorch_fid(n, d):
    rng = np.random.default_rng(n + d)
    real = _correlated(rng, n, d)
    fake = _correlated(rng, n + 7, d, scale=1.3, shift=0.2)
    mu1, sigma1 = features_to_statistics(real)
    mu2, sigma2 = features_to_statistics(fake)
    with warnings.catch_warnings():  # scipy warns on singular products
        warnings.simplefilter("ignore")
        expected = fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert statistics_to_frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
        expected, rel=1e-6
    )
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("n", "m", "d"), [(60, 45, 200), (30, 300, 120), (150, 90, 100)])
def test_low_rank_route_equals_covariance_route(n, m, d):
    # frechet_distance goes through the (N, M) singular values when a set has fewer rows than D.
    rng = np.random.default_rng(d)
    real, fake = _correlated(rng, n, d), _correlated(rng, m, d, scale=0.7, shift=0.1)
    via_statistics = statistics_to_frechet_distance(*features_to_statistics(real), *features_to_statistics(fake))
    assert frechet_distance(real, fake) == pytest.approx(via_statistics, rel=1e-9)


@pytest.mark.parametrize("block_rows", [1000, 16384])  # several row blocks, and one
def test_statistics_match_numpy(monkeypatch, block_rows):
    monkeypatch.setattr(fid, "_STATISTICS_BLOCK_ROWS", block_rows)
    x = _correlated(np.random.default_rng(0), 9000, 12, shift=3.0)
    mu, sigma = features_to_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (12, 12)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("n", "d"), [(1000, 32), (50, 200)])
def test_identical_inputs_give_zero(n, d):
    x = _correlated(np.random.default_rng(1), n, d)
    scale = np.trace(features_to_statistics(x)[1])
    assert abs(frechet_distance(x, x.copy())) < 1e-6 * scale


@pytest.mark.parametrize("singular", ["sigma2", "sigma1"])  # Cholesky route, eigh fallback
def test_closed_form_for_diagonal_gaussians(singular):
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    var1, var2 = rng.uniform(0.1, 4.0, size=20), rng.uniform(0.0, 4.0, size=20)
    (var2 if singular == "sigma2" else var1)[:3] = 0.0  # a rank-deficient covariance
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    result = statistics_to_frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert result == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_symmetric():
    rng = np.random.default_rng(3)
    real, fake = _correlated(rng, 400, 24), _correlated(rng, 300, 24, scale=0.7, shift=1.0)
    assert frechet_distance(real, fake) == pytest.approx(frechet_distance(fake, real), rel=1e-9)


def _reference_kid(x, y, degree=3, coef0=1.0):
    """Unbiased MMD² written out with explicit kernel matrices (torch-fidelity's form)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    m, gamma = x.shape[0], 1.0 / x.shape[1]
    k_xx = (gamma * x @ x.T + coef0) ** degree
    k_yy = (gamma * y @ y.T + coef0) ** degree
    k_xy = (gamma * x @ y.T + coef0) ** degree
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return within - 2 * k_xy.sum() / (m * m)


def test_kernel_distance_equals_explicit_reference_on_one_full_subset():
    rng = np.random.default_rng(4)
    real, fake = _correlated(rng, 200, 10), _correlated(rng, 200, 10, shift=0.3)
    result = kernel_distance(real, fake, num_subsets=1, subset_size=200)
    assert result == pytest.approx(_reference_kid(real, fake), rel=1e-10)


def test_kernel_distance_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(2000, 32)).astype(np.float32)
    same = rng.normal(size=(2000, 32)).astype(np.float32)
    shifted = (rng.normal(size=(2000, 32)) + 0.5).astype(np.float32)
    kid_same = kernel_distance(real, same, num_subsets=20, subset_size=500)
    kid_shifted = kernel_distance(real, shifted, num_subsets=20, subset_size=500)
    assert abs(kid_same) < 0.01
    assert kid_shifted > 0.1
    assert kid_shifted > 20 * abs(kid_same)


def test_kernel_distance_is_seeded_and_caps_the_subset_size():
    rng = np.random.default_rng(6)
    real, fake = _correlated(rng, 150, 8), _correlated(rng, 120, 8, shift=0.2)
    a = kernel_distance_subsets(real, fake, num_subsets=5, subset_size=1000, seed=1)
    b = kernel_distance_subsets(real, fake, num_subsets=5, subset_size=1000, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5,)
    assert kernel_distance(real, fake, num_subsets=5, subset_size=1000, seed=1) == pytest.approx(a.mean())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: frechet_distance(x[:, :3], y), "dimension mismatch"),
        (lambda x, y: frechet_distance(x[:1], y), "at least 2 rows"),
        (lambda x, y: frechet_distance(x[0], y), "2-D"),
        (lambda x, y: kernel_distance(x, y, num_subsets=0), "num_subsets"),
        (lambda x, y: kernel_distance(x, y, subset_size=1), "subset_size"),
        (lambda x, y: kernel_distance(x, y, degree=0), "degree"),
        (
            lambda x, y: statistics_to_frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)),
            "dimension mismatch",
        ),
        (
            lambda x, y: statistics_to_frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)),
            "mu must be",
        ),
    ],
)
def test_fid_functions_reject_bad_input(call, message):
    rng = np.random.default_rng(7)
    x, y = _correlated(rng, 20, 4), _correlated(rng, 20, 4)
    with pytest.raises(ValueError, match=message):
        call(x, y)


def test_fd_of_a_constant_set_is_the_closed_form():
    """A blank generator's features are constant: FD = |mu_real - c|^2 + tr(Sigma_real)."""
    real = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    blank = np.full((50, 8), 0.25, dtype=np.float32)
    expected = ((real.astype(np.float64).mean(0) - 0.25) ** 2).sum() + np.trace(np.cov(real.astype(np.float64), rowvar=False))
    assert frechet_distance(real, blank) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(blank, blank) == pytest.approx(0.0, abs=1e-9)
