import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from ganaudit.metrics import diversity
from ganaudit.metrics.diversity import (
    birthday_batch_test,
    count_close_pairs,
    support_size,
    support_size_from_pair_count,
    vendi_per_mode,
    vendi_score,
)

SUPPORT_KEYS = {"estimate", "ci_low", "ci_high", "n_pairs", "n_samples", "lower_bound_only"}
# Upper Garwood limit of a Poisson count of 0 at 95% (two-sided): -ln(0.025).
POISSON_UPPER_OF_ZERO = -math.log(0.025)


# --- Vendi score -------------------------------------------------------------------------


def _reference_vendi(x, normalize=True):
    """The definition: the explicit N×N kernel matrix, its eigenvalues, their entropy."""
    x = x.astype(np.float64)
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    kernel = x @ x.T
    w = np.linalg.eigvalsh(kernel / np.trace(kernel))  # trace = N when normalised
    w = w[w > 1e-12]
    return float(np.exp(-np.sum(w * np.log(w))))


def _orthonormal_rows(rng, k, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q[:k]


@pytest.mark.parametrize(("k", "per_cluster", "d"), [(5, 40, 64), (5, 4, 64), (12, 100, 16)])
def test_identical_orthogonal_clusters_give_k(k, per_cluster, d):
    # (5, 40, 64): N > D, the D×D route; (5, 4, 64): N <= D, the N×N route.
    rng = np.random.default_rng(k * per_cluster)
    centres = _orthonormal_rows(rng, k, d) * rng.uniform(0.5, 3.0, size=(k, 1))
    x = np.repeat(centres, per_cluster, axis=0).astype(np.float32)
    assert vendi_score(x[rng.permutation(len(x))]) == pytest.approx(k, rel=1e-9)


def test_distinct_orthogonal_vectors_give_n():
    x = _orthonormal_rows(np.random.default_rng(0), 30, 64).astype(np.float32)
    assert vendi_score(x) == pytest.approx(30, rel=1e-9)
    assert vendi_score(np.eye(50, dtype=np.float32)) == pytest.approx(50, rel=1e-12)


def test_unequal_clusters_give_exp_entropy_of_their_shares():
    sizes = np.array([10, 30, 60, 100])
    x = np.repeat(np.eye(4, 8, dtype=np.float32), sizes, axis=0)
    shares = sizes / sizes.sum()
    assert vendi_score(x) == pytest.approx(np.exp(-np.sum(shares * np.log(shares))), rel=1e-9)


def test_identical_samples_give_one():
    x = np.tile(np.random.default_rng(1).normal(size=(1, 20)), (300, 1)).astype(np.float32)
    assert vendi_score(x) == pytest.approx(1.0, rel=1e-9)
    assert vendi_score(x[:1]) == pytest.approx(1.0)


def _correlated(rng, n, d):
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 0.5).astype(np.float32)


@pytest.mark.parametrize(("n", "d"), [(300, 40), (40, 300), (64, 64)])
@pytest.mark.parametrize("normalize", [True, False])
def test_both_routes_agree_with_the_reference(n, d, normalize):
    x = _correlated(np.random.default_rng(n + d), n, d)
    via_features = diversity._vendi_from_gram(diversity._feature_gram(x, normalize))
    via_samples = diversity._vendi_from_gram(diversity._sample_gram(x, normalize))
    reference = _reference_vendi(x, normalize)
    assert via_features == pytest.approx(reference, rel=1e-9)
    assert via_samples == pytest.approx(reference, rel=1e-9)
    assert vendi_score(x, normalize) == pytest.approx(reference, rel=1e-9)


def test_feature_gram_accumulates_over_row_blocks():
    x = _correlated(np.random.default_rng(12), 9000, 12)  # three blocks of rows
    rows = x.astype(np.float64)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    gram = diversity._feature_gram(x, True)  # one more column, all zero here: no row is all zero
    np.testing.assert_allclose(gram[:12, :12], rows.T @ rows, rtol=1e-12)
    assert not gram[12].any()
    assert vendi_score(x) == pytest.approx(diversity._vendi_from_gram(rows.T @ rows), rel=1e-12)


def test_unnormalised_kernel_is_scale_free_and_equals_cosine_on_unit_rows():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 10))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float32)
    assert vendi_score(x, normalize=False) == pytest.approx(vendi_score(x), rel=1e-6)
    assert vendi_score(x * 1000, normalize=False) == pytest.approx(
        vendi_score(x, normalize=False), rel=1e-9
    )


def test_zero_rows_are_alike_and_unlike_everything_else():
    # Closed form: 3 orthogonal clusters of 4 and 4 all-zero rows are 4 equal, unrelated groups.
    x = np.vstack([np.repeat(np.eye(3, dtype=np.float32), 4, axis=0), np.zeros((4, 3), np.float32)])
    assert vendi_score(x) == pytest.approx(4.0, rel=1e-9)
    assert vendi_score(np.zeros((20, 5), dtype=np.float32)) == pytest.approx(1.0)  # a blank generator
    # Against the (N, N) kernel written out with the convention, both Gram routes.
    rng = np.random.default_rng(3)
    for n, d in ((40, 5), (6, 50)):
        y = rng.normal(size=(n, d)).astype(np.float32)
        y[[1, 4]] = 0
        y64 = y.astype(np.float64)
        unit = y64 / np.maximum(np.linalg.norm(y64, axis=1, keepdims=True), 1e-300)
        k = unit @ unit.T
        zero = ~y.any(axis=1)
        k[np.ix_(zero, zero)] = 1.0
        w = np.linalg.eigvalsh(k / n)
        w = w[w > 1e-12]
        assert vendi_score(y) == pytest.approx(float(np.exp(-(w * np.log(w)).sum())), rel=1e-9)
    y = rng.normal(size=(20, 5)).astype(np.float32)
    y[[3, 7]] = 0
    assert vendi_score(y, normalize=False) > 1
    with pytest.raises(ValueError, match="all zero"):
        vendi_score(np.zeros((20, 5), dtype=np.float32), normalize=False)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.ones(10, dtype=np.float32), "2-D"),
        (np.full((4, 3), np.inf, dtype=np.float32), "NaN or infinite"),
        (np.zeros((0, 3), dtype=np.float32), "at least 1 rows"),
    ],
)
def test_bad_feature_arrays_are_rejected(x, match):
    with pytest.raises(ValueError, match=match):
        vendi_score(x)


def test_vendi_per_mode():
    rng = np.random.default_rng(4)
    basis = np.eye(6, dtype=np.float32)
    # mode 0: 2 identical clusters; mode 1: 3; mode 2: one point.
    x = np.concatenate([np.repeat(basis[:2], 5, 0), np.repeat(basis[2:5], 4, 0), basis[5:]])
    labels = np.array([0] * 10 + [1] * 12 + [2])
    order = rng.permutation(len(x))
    result = vendi_per_mode(x[order], labels[order])
    assert list(result) == [0, 1, 2] and all(type(key) is int for key in result)
    assert result == pytest.approx({0: 2.0, 1: 3.0, 2: 1.0}, rel=1e-9)
    named = vendi_per_mode(x, np.where(labels == 1, "cat", "dog"))
    assert named == pytest.approx({"cat": 3.0, "dog": vendi_score(x[labels != 1])})


def test_vendi_per_mode_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="one per sample"):
        vendi_per_mode(np.eye(4, dtype=np.float32), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="one per sample"):
        vendi_per_mode(np.eye(4, dtype=np.float32), np.zeros((4, 1), dtype=int))


# --- Support size --------------------------------------------------------------------------


def _bank_samples(bank_size, n_samples, seed, d=16):
    """A generator that draws uniformly with replacement from a bank of bank_size images."""
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(bank_size, d)) * 10  # bank entries ~ 45 apart, never within 1
    picks = rng.integers(0, bank_size, size=n_samples)
    return (bank[picks] + rng.normal(size=(n_samples, d)) * 1e-3).astype(np.float32)


@pytest.mark.parametrize("bank_size", [200, 1000, 5000])
def test_support_size_recovers_the_bank_size(bank_size):
    # A 95% interval misses for 1 seed in 20 (the rate is tested below); seed 0 is typical.
    x = _bank_samples(bank_size, 2000, seed=0)
    result = support_size(x, threshold=1.0)
    assert set(result) == SUPPORT_KEYS
    assert result["ci_low"] <= bank_size <= result["ci_high"]
    assert result["estimate"] == pytest.approx(bank_size, rel=0.15)
    assert not result["lower_bound_only"] and result["n_samples"] == 2000
    assert result["estimate"] == pytest.approx(2000 * 1999 / 2 / result["n_pairs"])


def test_continuous_data_gives_a_lower_bound_only():
    x = np.random.default_rng(5).normal(size=(2000, 16)).astype(np.float32)
    result = support_size(x, threshold=0.05)
    assert result["n_pairs"] == 0 and result["lower_bound_only"]
    bound = 2000 * 1999 / 2 / POISSON_UPPER_OF_ZERO
    assert result["estimate"] == pytest.approx(bound) and result["ci_low"] == result["estimate"]
    assert result["ci_high"] == math.inf


def test_interval_covers_the_support_at_its_nominal_rate():
    # Pair counts simulated exactly (integer draws) for a many-pair and a few-pair regime.
    rng = np.random.default_rng(6)
    for bank_size, n_samples in [(300, 400), (20_000, 400)]:
        covered = 0
        for _ in range(400):
            counts = np.bincount(rng.integers(0, bank_size, size=n_samples))
            n_pairs = int((counts * (counts - 1) // 2).sum())
            r = support_size_from_pair_count(n_pairs, n_samples)
            covered += r["ci_low"] <= bank_size <= r["ci_high"]
        assert covered / 400 >= 0.93, (bank_size, covered)


def test_interval_narrows_with_confidence():
    wide = support_size_from_pair_count(50, 1000, confidence=0.99)
    narrow = support_size_from_pair_count(50, 1000, confidence=0.5)
    assert wide["ci_low"] < narrow["ci_low"] < narrow["estimate"]
    assert narrow["estimate"] < narrow["ci_high"] < wide["ci_high"]


@pytest.mark.parametrize("block_size", [7, 32, 10_000])
def test_pair_count_equals_brute_force(block_size):
    # Integer points: float32 distances are exact, so the strict "<" is tested at the boundary.
    rng = np.random.default_rng(7)
    x = rng.integers(0, 4, size=(120, 3)).astype(np.float32)
    brute = pdist(x.astype(np.float64))
    for threshold in [0.0, 1.0, 1.5, 2.0, 10.0]:
        expected = int((brute < threshold).sum())
        assert count_close_pairs(x, threshold, block_size=block_size) == expected, threshold


def test_pair_count_of_exact_duplicates_and_a_collapsed_set():
    x = np.random.default_rng(8).normal(size=(300, 32)).astype(np.float32) * 5
    x[150:] = x[:150]
    assert count_close_pairs(x, 1e-6) == 150
    assert count_close_pairs(x, 0.0) == 0  # strictly closer than 0: nothing
    collapsed = np.ones((500, 8), dtype=np.float32)
    assert count_close_pairs(collapsed, 0.1, block_size=128) == 500 * 499 // 2


@pytest.mark.parametrize("threshold", [-0.1, np.nan, np.inf, "1", None, True])
def test_bad_thresholds_are_rejected(threshold):
    x = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="threshold"):
        count_close_pairs(x, threshold)
    with pytest.raises(ValueError, match="threshold"):
        support_size(x, threshold)


def test_bad_pair_count_arguments_are_rejected():
    x = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="block_size"):
        count_close_pairs(x, 1.0, block_size=0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        support_size(x[:1], 1.0)
    for confidence in [1.0, 0.0, 95, "0.95", None]:
        with pytest.raises(ValueError, match="confidence"):
            support_size(x, 1.0, confidence=confidence)
    for n_pairs, n_samples in [(-1, 10), (1.5, 10), (True, 10), (46, 10), (0, 1)]:
        with pytest.raises(ValueError, match="n_pairs|n_samples"):
            support_size_from_pair_count(n_pairs, n_samples)


# --- The paper's batch protocol -------------------------------------------------------------


def test_batch_test_recovers_the_bank_size():
    x = _bank_samples(1000, 4000, seed=9)
    result = birthday_batch_test(x, threshold=1.0, batch_size=45, seed=0)
    assert result["n_batches"] == 88 and result["batch_size"] == 45
    p = result["duplicate_probability"]
    assert result["probability_ci_low"] <= p <= result["probability_ci_high"]
    assert p == pytest.approx(1 - math.exp(-45 * 44 / 2 / 1000), abs=0.15)
    assert result["ci_low"] <= 1000 <= result["ci_high"]
    assert not (result["lower_bound_only"] or result["upper_bound_only"])
    assert birthday_batch_test(x, 1.0, 45, seed=0) == result  # seeded


def test_batch_test_bounds_at_the_extremes():
    continuous = np.random.default_rng(10).normal(size=(1000, 16)).astype(np.float32)
    none = birthday_batch_test(continuous, threshold=0.05, batch_size=100)
    assert none["n_batches_with_duplicate"] == 0 and none["lower_bound_only"]
    assert none["estimate"] == none["ci_low"] > 0 and none["ci_high"] == math.inf
    tiny_bank = _bank_samples(5, 1000, seed=11)
    every = birthday_batch_test(tiny_bank, threshold=1.0, batch_size=50)
    assert every["duplicate_probability"] == 1.0 and every["upper_bound_only"]
    assert every["estimate"] == every["ci_high"] >= 5 and every["ci_low"] == 0.0


def test_batch_groups_are_searched_within_batches_only():
    # Tiles span several batches: pairs across batches must not count.
    points = np.random.default_rng(12).normal(size=(50, 8)) * 10
    x = np.repeat(points, 2, axis=0).astype(np.float32)  # 50 pairs of copies
    counts = diversity._close_pair_counts(x, 1.0, 16, np.arange(100) // 10)
    np.testing.assert_array_equal(counts, np.full(10, 5))
    counts = diversity._close_pair_counts(x, 1.0, 16, np.arange(100) // 3)  # pairs straddle
    assert counts.sum() == sum(1 for i in range(0, 100, 2) if i // 3 == (i + 1) // 3)


@pytest.mark.parametrize("batch_size", [1, 11, 2.5, True])
def test_batch_test_rejects_bad_batch_sizes(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        birthday_batch_test(np.zeros((10, 2), dtype=np.float32), 1.0, batch_size)
