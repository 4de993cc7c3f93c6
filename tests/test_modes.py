import math

import numpy as np
import pytest

from ganaudit.metrics.clustering import nearest_centroid
from ganaudit.metrics.modes import (
    kl_divergence,
    kmeans_modes,
    knn_vote_labels,
    mode_coverage,
)


def _blobs(rng, centres, labels, spread=1.0):
    points = centres[labels] + rng.normal(size=(labels.shape[0], centres.shape[1])) * spread
    return points.astype(np.float32)


@pytest.fixture(scope="module")
def ten_blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 16)) * 20  # far apart relative to unit spread
    train_labels = rng.integers(0, 10, size=2000)
    return rng, centres, train_labels, _blobs(rng, centres, train_labels)


def test_knn_vote_recovers_blob_labels(ten_blobs):
    rng, centres, train_labels, train = ten_blobs
    gen_labels = rng.integers(0, 10, size=500)
    gen = _blobs(rng, centres, gen_labels)
    votes = knn_vote_labels(train, train_labels, gen, k=5)
    assert votes.dtype == np.int64
    np.testing.assert_array_equal(votes, gen_labels)


def test_knn_vote_breaks_ties_by_the_nearest_tied_label():
    train = np.arange(5, dtype=np.float32)[:, None]  # 0, 1, 2, 3, 4 on a line
    query = np.array([[-0.1]], dtype=np.float32)  # neighbours in order 0, 1, 2, 3, 4
    assert knn_vote_labels(train, np.array([7, 8, 8, 9, 9]), query, k=5)[0] == 8
    assert knn_vote_labels(train, np.array([7, 8, 9, 8, 9]), query, k=5)[0] == 8
    assert knn_vote_labels(train, np.array([7, 8, 9, 9, 8]), query, k=5)[0] == 8
    assert knn_vote_labels(train, np.array([7, 7, 8, 8, 9]), query, k=5)[0] == 7
    assert knn_vote_labels(train, np.array([3, 8, 8, 8, 9]), query, k=5)[0] == 8


def test_fake_from_three_of_ten_blobs_covers_exactly_those(ten_blobs):
    rng, centres, train_labels, train = ten_blobs
    kept = np.array([1, 4, 7])
    gen = _blobs(rng, centres, rng.choice(kept, size=600))
    gen_labels = knn_vote_labels(train, train_labels, gen)
    result = mode_coverage(train_labels, gen_labels, n_modes=10)
    assert result["total"] == 10 and result["covered"] == 3
    assert result["covered_fraction"] == pytest.approx(0.3)
    assert result["missing"] == [0, 2, 3, 5, 6, 8, 9]
    assert result["n_distinct"] == 3
    assert [row["mode"] for row in result["per_mode"] if row["covered"]] == [1, 4, 7]
    assert result["kl_divergence"] > 1.0


def test_kmeans_finds_six_well_separated_blobs():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16)) * 10
    truth = rng.integers(0, 6, size=3000)
    x = _blobs(rng, centres, truth)
    labels, centroids = kmeans_modes(x, n_modes=None, seed=0, mode_range=(2, 10))
    assert centroids.shape == (6, 16) and centroids.dtype == np.float32
    assert labels.shape == (3000,) and labels.dtype == np.int64
    # Each found mode is exactly one true blob.
    for mode in range(6):
        assert np.unique(truth[labels == mode]).size == 1
    gen = _blobs(rng, centres, np.array([0, 3, 5]))
    assigned = nearest_centroid(gen, centroids)
    np.testing.assert_array_equal(
        assigned, [labels[np.flatnonzero(truth == t)[0]] for t in (0, 3, 5)]
    )


def test_kmeans_with_given_k_is_seeded():
    x = np.random.default_rng(2).normal(size=(500, 8)).astype(np.float32)
    a, ca = kmeans_modes(x, n_modes=4, seed=3)
    b, cb = kmeans_modes(x, n_modes=4, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)


def test_kl_is_zero_for_equal_distributions():
    train = np.array([0, 0, 1, 2, 2, 2])
    gen = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    result = mode_coverage(train, gen, n_modes=3)
    assert result["kl_divergence"] == 0.0
    assert result["covered"] == 3 and result["missing"] == []


def test_kl_matches_hand_computation():
    # train shares (0.5, 0.25, 0.25), generated shares (0.25, 0.25, 0.5), eps = 1e-6.
    train = np.array([0, 0, 1, 2])
    gen = np.array([0, 1, 2, 2])
    eps = 1e-6
    p = [(0.5 + eps) / (1 + 3 * eps), (0.25 + eps) / (1 + 3 * eps), (0.25 + eps) / (1 + 3 * eps)]
    q = [(0.25 + eps) / (1 + 3 * eps), (0.25 + eps) / (1 + 3 * eps), (0.5 + eps) / (1 + 3 * eps)]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert expected == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert mode_coverage(train, gen, n_modes=3)["kl_divergence"] == pytest.approx(expected, rel=1e-12)
    assert kl_divergence([0.5, 0.25, 0.25], [0.25, 0.25, 0.5]) == pytest.approx(expected, rel=1e-12)


def test_per_mode_rows_and_names():
    train = np.array([0] * 50 + [1] * 30 + [2] * 20)
    gen = np.array([0] * 90 + [1] * 10)  # mode 1: 0.1 >= 0.25 * 0.3; mode 2 absent
    result = mode_coverage(train, gen, n_modes=3, names=["cat", "dog", "owl"])
    assert result["missing"] == ["owl"]
    assert result["per_mode"][1] == {
        "mode": 1,
        "name": "dog",
        "train_share": 0.3,
        "generated_share": 0.1,
        "train_count": 30,
        "generated_count": 10,
        "covered": True,
    }
    strict = mode_coverage(train, gen, n_modes=3, min_share_ratio=0.5)
    assert strict["missing"] == [1, 2] and strict["n_distinct"] == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mode_coverage(np.array([0, 1]), np.array([0, 3]), n_modes=3), r"lie in \[0, 2\]"),
        (lambda: mode_coverage(np.array([0, 1]), np.array([0, 1]), n_modes=0), "n_modes"),
        (lambda: mode_coverage(np.array([0, 1]), np.array([0.5]), n_modes=2), "integers"),
        (lambda: mode_coverage(np.array([0, 1]), np.array([], int), n_modes=2), "empty"),
        (lambda: mode_coverage(np.array([0, 1]), np.array([0]), 2, names=["a"]), "names"),
        (
            lambda: knn_vote_labels(np.zeros((4, 2)), np.zeros(3, int), np.zeros((2, 2))),
            "3 train_labels for 4",
        ),
        (
            lambda: knn_vote_labels(np.zeros((4, 2)), np.zeros(4, int), np.zeros((2, 2)), k=5),
            "k must be",
        ),
        (lambda: knn_vote_labels(np.zeros((4, 2)), np.zeros(4, int), np.zeros((2, 3))), "dimension"),
        (lambda: kmeans_modes(np.zeros((4, 2), np.float32), n_modes=5), "n_modes"),
        (lambda: kmeans_modes(np.zeros((40, 2), np.float32), mode_range=(1, 3)), "mode_range"),
    ],
)
def test_modes_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
