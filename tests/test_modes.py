import math

import numpy as np
import pytest

from ganaudit.metrics.clustering import nearest_centroid
from ganaudit.metrics.modes import (
    UNASSIGNED,
    calibrate_margin,
    class_distances,
    confident_modes,
    kl_divergence,
    kmeans_modes,
    margin_floor,
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


# --- confident assignment (issue 16: honest mode counts) -----------------------------------


def _photo_tiles():
    """8 photo-patch classes: the 2x2 tiles of the two photos that ship with scikit-learn."""
    from sklearn.datasets import load_sample_images

    tiles = []
    for img in load_sample_images().images:
        img = img.astype(np.float32) / 255.0
        h, w = img.shape[0] // 2, img.shape[1] // 2
        tiles += [img[r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(2) for c in range(2)]
    return tiles


def _patches(tile, n, rng, size=32):
    """n random size x size crops of a tile, as `pixels` features (C, H, W flattened)."""
    ys, xs = rng.integers(0, tile.shape[0] - size, n), rng.integers(0, tile.shape[1] - size, n)
    return np.stack([tile[y:y + size, x:x + size].transpose(2, 0, 1).ravel() for y, x in zip(ys, xs)])


@pytest.fixture(scope="module")
def photo_patches():
    """Planted: 150 training and 40 held-out patches per class; the generator makes fresh
    patches of classes 0, 3 and 5 only (150 each), 150 uniform-noise images and 150
    class-ambiguous composites (left half from one class, right half from another)."""
    rng = np.random.default_rng(0)
    tiles = _photo_tiles()
    train = np.concatenate([_patches(t, 150, rng) for t in tiles])
    holdout = np.concatenate([_patches(t, 40, rng) for t in tiles])
    real_part = np.concatenate([_patches(tiles[c], 150, rng) for c in (0, 3, 5)])
    noise = rng.uniform(0, 1, size=(150, train.shape[1]))
    a, b = rng.integers(0, 8, 150), rng.integers(0, 8, 150)
    b = np.where(a == b, (b + 1) % 8, b)
    left = np.stack([_patches(tiles[i], 1, rng)[0] for i in a]).reshape(-1, 3, 32, 32)
    right = np.stack([_patches(tiles[j], 1, rng)[0] for j in b]).reshape(-1, 3, 32, 32)
    left[..., 16:] = right[..., 16:]
    gen = np.concatenate([real_part, noise, left.reshape(150, -1)]).astype(np.float32)
    return (train.astype(np.float32), np.repeat(np.arange(8), 150), holdout.astype(np.float32),
            np.repeat(np.arange(8), 40), gen)


def test_plain_vote_overcounts_photo_patch_modes(photo_patches):
    """The failure of issue 16: every sample lands in some class, however weak the vote."""
    train, labels, _, _, gen = photo_patches
    assert mode_coverage(labels, knn_vote_labels(train, labels, gen, k=5), n_modes=8)["covered"] >= 6


@pytest.mark.parametrize("reference", ["train-leave-one-out", "holdout"])
def test_confident_modes_count_three_of_eight_photo_patch_classes(photo_patches, reference):
    train, labels, holdout, holdout_labels, gen = photo_patches
    kw = {} if reference == "train-leave-one-out" else {"reference_features": holdout,
                                                          "reference_labels": holdout_labels}
    assigned, info = confident_modes(train, labels, gen, n_modes=8, k=5, **kw)
    result = mode_coverage(labels, assigned, n_modes=8)
    assert [row["mode"] for row in result["per_mode"] if row["covered"]] == [0, 3, 5]
    assert result["covered"] == 3 and result["n_unassigned"] == info["n_unassigned"] > 0
    assert result["n_assigned"] + result["n_unassigned"] == len(gen)
    assert (assigned[450:600] == UNASSIGNED).all()  # noise is never credited to a class
    assert (assigned[600:] != UNASSIGNED).mean() < 0.1  # composites hardly ever
    genuine = assigned[:450]
    truth = np.repeat([0, 3, 5], 150)
    assert (genuine[genuine >= 0] == truth[genuine >= 0]).mean() > 0.9
    assert info["reference"] == reference and info["reference_accuracy"] > 0.95
    assert info["margin_threshold"] > 1.0


def test_confident_modes_keep_well_separated_blobs(ten_blobs):
    rng, centres, train_labels, train = ten_blobs
    kept = np.array([1, 4, 7])
    gen = _blobs(rng, centres, rng.choice(kept, size=600))
    assigned, info = confident_modes(train, train_labels, gen, n_modes=10, k=5)
    assert info["margin_safe"] == 1.0  # no reference image is ever confused: any margin is safe
    assert info["margin_threshold"] == info["margin_floor"] > 1.0
    assert (assigned == UNASSIGNED).mean() < 0.03  # the floor's 1% tail, give or take
    assert mode_coverage(train_labels, assigned, 10)["missing"] == [0, 2, 3, 5, 6, 8, 9]


def test_margin_refuses_images_unlike_every_mode_and_keeps_imperfect_ones(ten_blobs):
    rng, centres, train_labels, train = ten_blobs
    unit = rng.normal(size=16)
    unit /= np.linalg.norm(unit)
    far = (1e4 * unit)[None]  # unlike every blob: about equally far from all of them
    rough = (centres[1] + 4.0 * unit)[None]  # off blob 1 (spread 1), far nearer it than any other
    gen = np.concatenate([far, rough]).astype(np.float32)
    assigned, info = confident_modes(train, train_labels, gen, n_modes=10, k=5)
    assert assigned.tolist() == [UNASSIGNED, 1] and info["n_unassigned"] == 1


def test_class_distances_equal_brute_force_with_leave_one_out():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(60, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    labels[:2] = 0
    rows = np.arange(0, 60, 7)
    got = class_distances(train, labels, train[rows], n_modes=4, k=3, self_index=rows)
    for r, i in enumerate(rows):
        for m in range(3):
            members = [j for j in np.flatnonzero(labels == m) if j != i]
            d = np.sort(np.sqrt(((train[members] - train[i]) ** 2).sum(1)))[:3]
            assert got[r, m] == pytest.approx(d.mean(), rel=1e-5)
    assert np.isinf(got[:, 3]).all()  # a mode without training samples is infinitely far


def test_calibrate_margin_hand_case():
    # Two modes, equal shares; bound = 0.5 * 0.25 * 0.5 = 0.0625 of a mode's confident rows.
    # Mode 0's reference rows: margins 1.1 (wrongly put in mode 1), 1.5, 2, 3 (right).
    dist = np.array([[2.2, 2.0], [1.0, 1.5], [1.0, 2.0], [1.0, 3.0],   # true mode 0
                     [5.0, 1.0], [4.0, 1.0], [3.0, 1.0], [2.0, 1.0]])  # true mode 1, all right
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    t = calibrate_margin(dist, truth, np.array([0.5, 0.5]), min_share_ratio=0.25)
    assert 1.1 < t <= 1.5  # just above the confused row's margin
    assert calibrate_margin(dist[[0, 4]], truth[[0, 4]], np.array([0.5, 0.5]), 0.25) > 1.1


def test_margin_floor_is_the_conformal_lower_quantile():
    margins = np.arange(1, 200, dtype=float)  # 199 reference margins 1 .. 199
    assert margin_floor(margins, tail=0.01) == 2.0  # floor(0.01 * 200) = 2nd smallest
    assert margin_floor(margins[:50], tail=0.01) == 1.0  # too few to refuse anything
    assert margin_floor(np.full(300, np.inf)) == 1.0  # one mode: no competitor, nothing refused


def test_mode_coverage_counts_assigned_samples_only():
    train = np.array([0] * 50 + [1] * 50)
    gen = np.array([0] * 10 + [UNASSIGNED] * 90)
    result = mode_coverage(train, gen, n_modes=2)
    assert result["covered"] == 1 and result["missing"] == [1]
    assert result["n_assigned"] == 10 and result["n_unassigned"] == 90
    assert result["per_mode"][0]["generated_share"] == 1.0
    none = mode_coverage(train, np.full(5, UNASSIGNED), n_modes=2)
    assert none["covered"] == 0 and none["n_assigned"] == 0
    with pytest.raises(ValueError, match="reference_labels"):
        confident_modes(np.zeros((4, 2), np.float32), np.zeros(4, int), np.zeros((1, 2), np.float32), 1,
                        k=1, reference_features=np.zeros((2, 2), np.float32))


def test_confident_kmeans_modes_with_a_holdout_reference():
    """The audit's k-means route: holdout labelled by nearest centroid is the reference."""
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(6, 16)) * 10
    train = _blobs(rng, centres, rng.integers(0, 6, size=1200))
    holdout = _blobs(rng, centres, rng.integers(0, 6, size=400))
    labels, centroids = kmeans_modes(train, n_modes=6, seed=0)
    kept = nearest_centroid(centres[[0, 3]].astype(np.float32), centroids)
    gen = _blobs(rng, centres, rng.choice([0, 3], size=300))
    noise = (rng.normal(size=(60, 16)) * 1e3).astype(np.float32)  # far from every mode
    assigned, info = confident_modes(train, labels, np.concatenate([gen, noise]), n_modes=6, k=5,
                                     reference_features=holdout,
                                     reference_labels=nearest_centroid(holdout, centroids))
    result = mode_coverage(labels, assigned, 6)
    assert info["reference"] == "holdout" and info["n_reference"] == 400
    assert sorted(row["mode"] for row in result["per_mode"] if row["covered"]) == sorted(kept.tolist())
    assert (assigned[300:] == UNASSIGNED).all() and (assigned[:300] != UNASSIGNED).mean() > 0.95
