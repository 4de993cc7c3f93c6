"""Memorisation metrics on planted ground truth, closed forms and independent references."""
import numpy as np
import pytest
from scipy.stats import binomtest, kstest, mannwhitneyu
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

from ganaudit.metrics.copy_stats import (
    benjamini_hochberg,
    binomial_ci,
    calibrate_threshold,
    average_ranks,
    cosine_to_distance,
    empirical_p_values,
    leaked_train_examples,
    rank_auc,
    relative_nn_score,
)
from ganaudit.metrics.clustering import kmeans_centroids, nearest_centroid
from ganaudit.metrics.memorization import (
    authentic_mask,
    authenticity,
    ct_statistic,
    ct_statistic_from_cells,
    mia_auc,
    within_cell_nearest_distances,
)
from ganaudit.search.copy_search import matches_from_search
from ganaudit.search.index import FlatIndex


def _mixture(rng, n, dim=8, n_modes=4):
    """Samples from a fixed Gaussian mixture (the 'data distribution')."""
    means = np.random.default_rng(1234).normal(scale=4.0, size=(n_modes, dim))
    return (means[rng.integers(n_modes, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train, holdout, fresh = _mixture(rng, 4000), _mixture(rng, 2000), _mixture(rng, 2000)
    picked = rng.choice(len(train), 1000, replace=False)
    copies = train[picked] + rng.normal(scale=0.01, size=(1000, 8)).astype(np.float32)
    return {"train": train, "holdout": holdout, "fresh": fresh, "copies": copies, "picked": picked}


# --- relative nearest-neighbour score -----------------------------------------------------


def test_relative_score_closed_form():
    dist = np.array([[0.0, 1.0, 3.0], [1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(relative_nn_score(dist), [0.0, 0.5, 0.0, 1.0])
    assert relative_nn_score(dist).dtype == np.float64


@pytest.mark.parametrize(
    "bad", [np.ones((3, 1)), np.ones(3), np.array([[2.0, 1.0]]), np.array([[-1.0, 1.0]]),
            np.array([[np.nan, 1.0]])],
)
def test_relative_score_rejects_bad_distances(bad):
    with pytest.raises(ValueError):
        relative_nn_score(bad)


def test_cosine_to_distance_matches_euclidean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16))
    y = rng.normal(size=(50, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    sim = np.sum(x * y, axis=1)
    np.testing.assert_allclose(cosine_to_distance(sim), np.linalg.norm(x - y, axis=1), atol=1e-12)
    assert cosine_to_distance(np.float32(1.0 + 1e-6)) == 0.0
    assert cosine_to_distance(np.array([1, -1])).tolist() == [0.0, 2.0]


def score_against_train(train, queries, k, exclude_self=False):
    """Scores as the audit computes them: a FlatIndex search for k + 1 neighbours, then Matches."""
    exclude = np.arange(len(queries)) if exclude_self else None
    raw, idx = FlatIndex(train).search(queries, k + 1, exclude=exclude)
    matches = matches_from_search(raw, idx, "l2")
    return matches.score, matches.train_index


def test_copies_score_far_below_holdout_and_are_flagged(data):
    reference, _ = score_against_train(data["train"], data["holdout"], k=10)
    scores, nearest = score_against_train(data["train"], data["copies"], k=10)
    threshold = calibrate_threshold(reference, alpha=0.01)
    assert np.median(scores) < 0.05 * np.median(reference)
    assert (scores < threshold).all()
    np.testing.assert_array_equal(nearest, data["picked"])


def test_perfect_generator_is_flagged_at_rate_alpha(data):
    alpha = 0.05
    reference, _ = score_against_train(data["train"], data["holdout"], k=10)
    scores, _ = score_against_train(data["train"], data["fresh"], k=10)
    flagged = scores < calibrate_threshold(reference, alpha=alpha)
    n_gen, n_ref = len(scores), len(reference)
    # threshold noise and flag noise: two binomial variances; 4 standard deviations.
    tolerance = 4 * np.sqrt(alpha * (1 - alpha) * (1 / n_gen + 1 / n_ref))
    assert abs(flagged.mean() - alpha) < tolerance


def test_leave_one_out_reference_without_holdout(data):
    reference, nearest = score_against_train(data["train"], data["train"], k=10, exclude_self=True)
    assert not (nearest == np.arange(len(data["train"]))).any()
    scores, _ = score_against_train(data["train"], data["fresh"], k=10)
    flagged = scores < calibrate_threshold(reference, alpha=0.05)
    assert abs(flagged.mean() - 0.05) < 0.03


def test_scores_match_a_brute_force_reference(data):
    queries = data["fresh"][:200]
    scores, nearest = score_against_train(data["train"], queries, k=10)
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - data["train"][None].astype(np.float64)) ** 2).sum(-1))
    d.sort(axis=1)
    np.testing.assert_allclose(scores, d[:, 0] / d[:, 1:11].mean(axis=1), rtol=1e-4)
    np.testing.assert_array_equal(nearest, np.argmin(
        ((queries[:, None, :] - data["train"][None]) ** 2).sum(-1), axis=1))


# --- calibration: threshold, p-values, BH, binomial CI -----------------------------------


def test_threshold_is_the_conformal_quantile():
    ref = np.arange(1.0, 21.0)  # 1..20: floor(0.1 * 21) = 2, the 2nd smallest
    assert calibrate_threshold(ref, alpha=0.1) == 2.0
    assert calibrate_threshold(np.arange(1999, -1, -1.0), alpha=0.05) == 99.0  # j = 100
    with pytest.raises(ValueError, match="need at least 19"):
        calibrate_threshold(ref[:18], alpha=0.05)
    with pytest.raises(ValueError, match="alpha"):
        calibrate_threshold(ref, alpha=1.5)
    with pytest.raises(ValueError, match="non-empty"):
        calibrate_threshold([], alpha=0.1)


def test_threshold_agrees_with_p_values():
    rng = np.random.default_rng(3)
    ref, scores = rng.random(500), rng.random(3000)
    for alpha in (0.01, 0.05, 0.2):
        by_threshold = scores < calibrate_threshold(ref, alpha)
        np.testing.assert_array_equal(by_threshold, empirical_p_values(scores, ref) <= alpha)


def test_p_values_exact_on_hand_case():
    p = empirical_p_values([0.5, 2.0, 4.0, 5.0], [4.0, 1.0, 3.0, 2.0])
    np.testing.assert_allclose(p, [1 / 5, 3 / 5, 5 / 5, 5 / 5])


def test_p_values_uniform_under_null():
    rng = np.random.default_rng(4)
    p = empirical_p_values(rng.normal(size=5000), rng.normal(size=5000))
    assert kstest(p, "uniform").pvalue > 1e-3
    assert abs((p <= 0.05).mean() - 0.05) < 0.012


def test_benjamini_hochberg_hand_case_step_up():
    # sorted: .005 .01 .03 .032 .04 .2 vs k q / m = .0083 .0167 .025 .0333 .0417 .05:
    # .03 misses its bound, but .04 (k = 5) meets its own, so the five smallest are rejected.
    p = np.array([0.01, 0.032, 0.03, 0.005, 0.2, 0.04])
    np.testing.assert_array_equal(benjamini_hochberg(p, q=0.05), [1, 1, 1, 1, 0, 1])
    assert not benjamini_hochberg(np.array([0.02, 0.5]), q=0.01).any()
    assert benjamini_hochberg(np.array([]), q=0.05).shape == (0,)


def _bh_adjusted(p):
    """statsmodels' 'fdr_bh' adjusted p-values, written out: cumulative min from the top."""
    m = len(p)
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


@pytest.mark.parametrize("q", [0.05, 0.2])
def test_benjamini_hochberg_matches_adjusted_p_values(q):
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.random(300), rng.random(60) * 1e-3])
    mask = benjamini_hochberg(p, q=q)
    np.testing.assert_array_equal(mask, _bh_adjusted(p) <= q)
    assert 0 < mask.sum() < len(p)


def test_benjamini_hochberg_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg(np.array([0.1, 1.2]))
    with pytest.raises(ValueError, match="q must be"):
        benjamini_hochberg(np.array([0.1]), q=0.0)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (1, 2000), (100, 2000), (7, 7)])
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_binomial_ci_is_clopper_pearson(k, n, confidence):
    low, high = binomial_ci(k, n, confidence)
    ref = binomtest(k, n).proportion_ci(confidence_level=confidence)
    assert low <= k / n <= high
    np.testing.assert_allclose([low, high], [ref.low, ref.high], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k, n, confidence", [(-1, 5, 0.95), (6, 5, 0.95), (0, 0, 0.95),
                                              (1, 5, 1.0), (1.5, 5, 0.95)])
def test_binomial_ci_rejects_bad_input(k, n, confidence):
    with pytest.raises(ValueError):
        binomial_ci(k, n, confidence)


@pytest.mark.parametrize("values", [
    np.array([3.0, 1.0, 2.0]),
    np.array([1.0, 1.0, 1.0, 1.0]),
    np.array([2.5, 0.5, 2.5, 7.0, 0.5, 0.5, 9.0, 2.5]),
    np.random.default_rng(0).integers(0, 6, size=500).astype(float),  # many ties
    np.random.default_rng(1).normal(size=300),
])
def test_average_ranks_equal_scipy_rankdata(values):
    from scipy.stats import rankdata

    np.testing.assert_array_equal(average_ranks(values), rankdata(values))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_auc_equals_sklearn_roc_auc(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(0.5, 1.0, size=120), 1)  # rounded: ties within and across classes
    neg = np.round(rng.normal(0.0, 1.0, size=90), 1)
    expected = roc_auc_score(np.r_[np.ones(120), np.zeros(90)], np.r_[pos, neg])
    assert rank_auc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert rank_auc(np.ones(3), np.zeros(4)) == 1.0 and rank_auc(np.zeros(3), np.zeros(4)) == 0.5


# --- C_T (Meehan et al. 2020) -------------------------------------------------------------


def _reference_zu(pn, qm, t):
    """Transcription of ``Zu`` in Meehan et al.'s data_copying_tests.py (casey-meehan/data-copying):
    nearest-neighbour model fitted on the training points T *of one cell*, distances of that
    cell's test (Pn) and generated (Qm) samples, scipy's U of L(Qm) against L(Pn) with
    alternative 'less', Z-scored with mean n m / 2 - 0.5 and variance n m (n + m + 1) / 12."""
    m, n = len(qm), len(pn)
    t_nn = NearestNeighbors(n_neighbors=1).fit(t)
    lqm = t_nn.kneighbors(qm, n_neighbors=1)[0]
    lpn = t_nn.kneighbors(pn, n_neighbors=1)[0]
    u = mannwhitneyu(lqm, lpn, alternative="less").statistic
    return float(np.squeeze((u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)))


def _reference_ct(train, holdout, generated, train_cells, holdout_cells, generated_cells, tau_count=20):
    """Transcription of ``C_T`` / ``Zu_cells`` of the same file, with tau = 20 / m as in the
    authors' experiments: cells with Qm(pi) > tau are kept, each weighted by Pn(pi). (The
    original orders counts with ``cts[labels]``, which assumes every cell holds a generated
    sample; ``bincount`` is what that line means.) Every cell must hold test and training
    samples, else the original raises."""
    train, holdout, generated = (x.astype(np.float64) for x in (train, holdout, generated))
    n, m, k = len(holdout), len(generated), len(np.unique(holdout_cells))
    qm_of_pi = np.bincount(generated_cells, minlength=k) / m
    pn_of_pi = np.bincount(holdout_cells, minlength=k) / n
    zu = np.zeros(k)
    for i in range(k):
        pn_i, qm_i, t_i = holdout[holdout_cells == i], generated[generated_cells == i], train[train_cells == i]
        assert len(pn_i) * len(t_i) > 0, "the reference raises: cell lacks test or training samples"
        zu[i] = _reference_zu(pn_i, qm_i, t_i) if len(qm_i) else 0.0
    keep = qm_of_pi > tau_count / m
    return float(pn_of_pi[keep].dot(zu[keep]) / np.sum(pn_of_pi[keep]))


def _global_nn_ct(train, holdout, generated, train_cells, holdout_cells, generated_cells):
    """The old (wrong) definition: nearest training point over the whole training set."""
    nn = NearestNeighbors(n_neighbors=1).fit(train.astype(np.float64))
    lp, lq = nn.kneighbors(holdout)[0][:, 0], nn.kneighbors(generated)[0][:, 0]
    return ct_statistic_from_cells(lp, holdout_cells, lq, generated_cells)


def _partly_copying(data, rng):
    """Half fresh samples, half training points moved by noise a little below their spacing."""
    moved = data["train"][:500] + rng.normal(scale=0.3, size=(500, 8)).astype(np.float32)
    return np.concatenate([data["fresh"][:500], moved])


@pytest.fixture(scope="module")
def gauss64():
    """64-d Gaussian tests: one Gaussian (cells cut through its mass, so many global nearest
    neighbours lie in another cell) and generated samples half fresh, half moved training points."""
    rng = np.random.default_rng(11)
    train = rng.normal(size=(3000, 64)).astype(np.float32)
    holdout = rng.normal(size=(1000, 64)).astype(np.float32)
    moved = train[:400] + rng.normal(scale=0.4, size=(400, 64)).astype(np.float32)
    generated = np.concatenate([rng.normal(size=(600, 64)).astype(np.float32), moved])
    return train, holdout, generated


def test_ct_from_cells_equals_reference_with_sklearn_cells(data):
    rng = np.random.default_rng(6)
    train, holdout, generated = data["train"], data["holdout"], _partly_copying(data, rng)
    km = KMeans(n_clusters=6, n_init=3, random_state=0).fit(train)
    labels = [km.labels_, km.predict(holdout), km.predict(generated)]
    expected = _reference_ct(train, holdout, generated, *labels)
    dist_h = within_cell_nearest_distances(train, labels[0], holdout, labels[1])
    dist_g = within_cell_nearest_distances(train, labels[0], generated, labels[2])
    got = ct_statistic_from_cells(dist_h, labels[1], dist_g, labels[2])
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)  # float32 FAISS distances
    assert expected < -1.0  # the planted partial copying shows


def _brute_force_cells(centroids, *arrays):
    c = centroids.astype(np.float64)
    return [np.argmin(((x.astype(np.float64)[:, None, :] - c[None]) ** 2).sum(-1), axis=1) for x in arrays]


@pytest.mark.parametrize("n_cells,seed", [(5, 3), (10, 0)])
def test_ct_statistic_end_to_end_equals_reference_on_64d_gaussians(gauss64, n_cells, seed):
    train, holdout, generated = gauss64
    centroids = kmeans_centroids(train, n_cells, seed=seed)
    labels = _brute_force_cells(centroids, train, holdout, generated)
    np.testing.assert_array_equal(nearest_centroid(holdout, centroids), labels[1])
    expected = _reference_ct(train, holdout, generated, *labels)
    got = ct_statistic(train, holdout, generated, n_cells=n_cells, seed=seed)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # The planted copying shows, and the definition matters here: the whole-set nearest
    # neighbour lies in another cell for many held-out points, and the old value differs.
    assert expected < -3
    nn_idx = NearestNeighbors(n_neighbors=1).fit(train).kneighbors(holdout)[1][:, 0]
    assert (labels[0][nn_idx] != labels[1]).mean() > 0.3
    assert abs(_global_nn_ct(train, holdout, generated, *labels) - expected) > 1e-3 * abs(expected)


def test_ct_statistic_end_to_end_equals_reference(data):
    rng = np.random.default_rng(7)
    train, holdout, generated = data["train"], data["holdout"], _partly_copying(data, rng)
    centroids = kmeans_centroids(train, 5, seed=3)
    labels = _brute_force_cells(centroids, train, holdout, generated)
    expected = _reference_ct(train, holdout, generated, *labels)
    assert ct_statistic(train, holdout, generated, n_cells=5, seed=3) == pytest.approx(
        expected, rel=1e-5, abs=1e-5
    )


def test_within_cell_distances_are_blockwise_and_nan_for_empty_cells():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 3)).astype(np.float32)
    queries = rng.normal(size=(20, 3)).astype(np.float32)
    train_cells, query_cells = np.arange(50) % 2, np.arange(20) % 3  # cell 2 holds no training point
    got = within_cell_nearest_distances(train, train_cells, queries, query_cells)
    for i in range(20):
        members = train[train_cells == query_cells[i]]
        want = np.sqrt(((members - queries[i]) ** 2).sum(1)).min() if len(members) else np.nan
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="holds no training point"):
        ct_statistic_from_cells(got[:3], np.full(3, 2), got[:30].repeat(2)[:30] * 0 + np.nan, np.full(30, 2))
    with pytest.raises(ValueError, match="one cell label per row"):
        within_cell_nearest_distances(train, train_cells[:-1], queries, query_cells)


def test_ct_near_zero_for_independent_samples(data):
    ct = ct_statistic(data["train"], data["holdout"][:1000], data["fresh"][:1000], n_cells=5)
    assert abs(ct) < 1.5


def test_ct_strongly_negative_for_copies(data):
    assert ct_statistic(data["train"], data["holdout"][:1000], data["copies"], n_cells=5) < -3


def test_ct_positive_for_underfitting(data):
    rng = np.random.default_rng(8)
    blurry = data["fresh"][:1000] + rng.normal(scale=1.0, size=(1000, 8)).astype(np.float32)
    assert ct_statistic(data["train"], data["holdout"][:1000], blurry, n_cells=5) > 3


def test_ct_is_seeded(data):
    args = (data["train"], data["holdout"][:1000], data["fresh"][:1000])
    assert ct_statistic(*args, n_cells=5, seed=1) == ct_statistic(*args, n_cells=5, seed=1)


def test_ct_rejects_bad_input(data):
    with pytest.raises(ValueError, match=r"must be in \[1, 10\]"):
        ct_statistic(data["train"][:10], data["holdout"], data["fresh"], n_cells=11)
    with pytest.raises(ValueError, match="no cell holds more than 20"):
        ct_statistic(data["train"], data["holdout"], data["fresh"][:20], n_cells=2)
    with pytest.raises(ValueError, match="dimension mismatch"):
        ct_statistic(data["train"], data["holdout"][:, :3], data["fresh"], n_cells=2)
    with pytest.raises(ValueError, match="match its cell labels"):
        ct_statistic_from_cells(np.ones(3), np.zeros(2), np.ones(30), np.zeros(30))
    with pytest.raises(ValueError, match="min_generated must be an integer"):
        ct_statistic_from_cells(np.ones(3), np.zeros(3), np.ones(30), np.zeros(30), 2.5)


# --- authenticity (Alaa et al. 2022) -------------------------------------------------------


def test_authenticity_hand_case_1d():
    # Leave-one-out nearest distances of the training points 0, 1, 3, 10: 1, 1, 2, 7.
    train = np.array([[0.0], [1.0], [3.0], [10.0]], dtype=np.float32)
    gen = np.array([[0.4], [2.5], [6.0], [12.0], [-2.0], [20.0], [5.0]], dtype=np.float32)
    # 0.4 -> 0 (0.4 <= 1) no; 2.5 -> 3 (0.5 <= 2) no; 6 -> 3 (3 > 2) yes; 12 -> 10 (2 <= 7) no;
    # -2 -> 0 (2 > 1) yes; 20 -> 10 (10 > 7) yes; 5 -> 3 (2 <= 2, a tie) no.
    expected = [False, False, True, False, True, True, False]
    np.testing.assert_array_equal(authentic_mask(train, gen), expected)
    assert authenticity(train, gen) == pytest.approx(3 / 7)


def test_authenticity_hand_case_2d_uses_the_matched_points_own_ball():
    # Training point (0, 0) has a neighbour at distance 1, (10, 0) one at distance 5.
    train = np.array([[0, 0], [1, 0], [10, 0], [15, 0]], dtype=np.float32)
    # (10, 3): nearest (10, 0) at 3 < 5 -> inauthentic although 3 exceeds (0, 0)'s radius.
    # (0, 3): nearest (0, 0) at 3 > 1 -> authentic.
    gen = np.array([[10, 3], [0, 3]], dtype=np.float32)
    np.testing.assert_array_equal(authentic_mask(train, gen), [False, True])


def test_authenticity_extremes(data):
    assert authenticity(data["train"], data["train"][:300].copy()) == 0.0
    assert authenticity(data["train"], data["train"][:300] + 100.0) == 1.0
    dup = np.concatenate([data["train"][:50], data["train"][:50]])
    assert authenticity(dup, data["train"][:50].copy()) == 0.0  # copies of duplicated points


def test_authenticity_accepts_precomputed_train_distances(data):
    from ganaudit.search.index import knn

    train, gen = data["train"], data["fresh"][:500]
    loo = knn(train, train, 1, exclude_self=True)[0][:, 0]
    np.testing.assert_array_equal(
        authentic_mask(train, gen, train_nn_dist=loo), authentic_mask(train, gen)
    )
    with pytest.raises(ValueError, match="train_nn_dist must have shape"):
        authentic_mask(train, gen, train_nn_dist=loo[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        authenticity(train[:1], gen)


# --- membership inference AUC (GAN-Leaks) ------------------------------------------------


def test_mia_auc_chance_for_independent_generator(data):
    auc = mia_auc(data["train"], data["holdout"], data["fresh"], seed=0)
    assert abs(auc - 0.5) < 0.05


def test_mia_auc_high_for_copies_of_train(data):
    copies = data["train"][:1000].copy()
    assert mia_auc(data["train"][:1000], data["holdout"][:1000], copies) > 0.95
    # Copies of a quarter of a larger training set: every member is scored, so the AUC is
    # about 1/4 * 1 + 3/4 * 1/2 (the copied quarter always wins, the rest is chance).
    assert mia_auc(data["train"], data["holdout"], data["copies"]) == pytest.approx(0.625, abs=0.03)


def test_mia_auc_uses_every_training_image_and_equals_sklearn(data):
    """Planted: 4000 members (1000 of them copied) against 700 non-members, no rebalancing."""
    from sklearn.metrics import roc_auc_score

    train, holdout, generated = data["train"], data["holdout"][:700], data["copies"]
    nn = NearestNeighbors(n_neighbors=1).fit(generated.astype(np.float64))
    d_train = nn.kneighbors(train.astype(np.float64))[0][:, 0]
    d_holdout = nn.kneighbors(holdout.astype(np.float64))[0][:, 0]
    labels = np.r_[np.ones(len(train)), np.zeros(len(holdout))]
    expected = roc_auc_score(labels, -np.r_[d_train, d_holdout])
    assert mia_auc(train, holdout, generated) == pytest.approx(expected, abs=1e-6)
    # The copied members alone are found every time; the uncopied ones are chance.
    picked = np.zeros(len(train), bool)
    picked[data["picked"]] = True
    copied_only = roc_auc_score(np.r_[np.ones(picked.sum()), np.zeros(len(holdout))],
                                -np.r_[d_train[picked], d_holdout])
    assert copied_only > 0.99 and expected == pytest.approx(0.25 * copied_only + 0.75 * 0.5, abs=0.03)


def test_mia_auc_argument_order_is_train_holdout_generated(data):
    generated = data["train"][:1000] + 0.01
    leaky = mia_auc(data["train"][:1000], data["holdout"][:1000], generated)
    swapped = mia_auc(data["holdout"][:1000], data["train"][:1000], generated)
    assert leaky > 0.95 and swapped < 0.05


def test_mia_auc_has_no_randomness_left(data):
    args = (data["train"], data["holdout"][:500], data["copies"])
    assert mia_auc(*args, seed=2) == mia_auc(*args, seed=5)
    with pytest.raises(ValueError, match="dimension mismatch"):
        mia_auc(data["train"], data["holdout"][:, :2], data["copies"])


# --- leaked training examples ------------------------------------------------------------


def test_leaked_train_examples_most_copied_first():
    got = leaked_train_examples(np.array([3, 1, 3, 3, 1, 7, 0]), n_train=10)
    assert got == [(3, 3), (1, 2), (0, 1), (7, 1)]
    assert leaked_train_examples(np.array([], dtype=np.int64), n_train=10) == []
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        leaked_train_examples(np.array([10]), n_train=10)
    with pytest.raises(ValueError, match="integer"):
        leaked_train_examples(np.array([1.0]), n_train=10)


def test_metrics_print_nothing(data, capfd):
    # FAISS' k-means writes a warning to stderr when cells are small; the metric must not.
    small = data["train"][:100]  # fewer than FAISS' 39 points per centroid
    ct_statistic(small, data["holdout"][:200], data["copies"][:200], n_cells=4)
    mia_auc(small, data["holdout"][:200], data["copies"][:200])
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
