import numpy as np
import pytest
from sklearn.metrics import pairwise_distances

from ganaudit.index import knn


def _brute(database, queries, k, metric):
    if metric == "l2":
        d = pairwise_distances(queries.astype(np.float64), database.astype(np.float64))
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
    else:
        d = queries.astype(np.float64) @ database.astype(np.float64).T
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("block_size", [7, 64, 100_000])
def test_blockwise_search_equals_brute_force(metric, block_size):
    rng = np.random.default_rng(0)
    database = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    dist, idx = knn(database, queries, k=5, metric=metric, block_size=block_size)
    ref_d, ref_i = _brute(database, queries, 5, metric)
    assert idx.shape == (50, 5) and idx.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)


def test_exclude_self_is_leave_one_out():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    dist, idx = knn(x, x, k=3, exclude_self=True, block_size=50)
    assert not (idx == np.arange(200)[:, None]).any()
    d = pairwise_distances(x.astype(np.float64))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :3], rtol=1e-4, atol=1e-4)


def test_exclude_self_with_exact_duplicates_keeps_the_twin():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    dist, idx = knn(x, x, k=1, exclude_self=True)
    assert idx[:2, 0].tolist() == [1, 0]
    np.testing.assert_allclose(dist[:2, 0], 0.0, atol=1e-6)


def test_rejects_bad_arguments():
    x = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="k must be"):
        knn(x, x, k=5)
    with pytest.raises(ValueError, match="dimension mismatch"):
        knn(x, np.zeros((2, 4), dtype=np.float32), k=1)
    with pytest.raises(ValueError, match="metric"):
        knn(x, x, k=1, metric="cosine")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_approximate_indexes_reach_high_measured_recall(kind, metric):
    from ganaudit.index import build_index, recall_at_1

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(50, 32)).astype(np.float32) * 4
    database = (centres[rng.integers(0, 50, 8_000)] + rng.normal(size=(8_000, 32))).astype(np.float32)
    queries = (centres[rng.integers(0, 50, 300)] + rng.normal(size=(300, 32))).astype(np.float32)
    index = build_index(database, metric, kind=kind)
    assert index.kind == kind
    recall = recall_at_1(index, database, queries)
    # Computed independently: the share of first results equal to brute force.
    _, approx = index.search(queries, 1)
    _, exact = _brute(database, queries, 1, metric)
    assert recall == pytest.approx(np.mean(approx[:, 0] == exact[:, 0]))
    assert recall >= 0.9


def test_auto_index_is_exact_below_the_size_and_approximate_above():
    from ganaudit.index import build_index

    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    assert build_index(x, kind="auto", approx_above=5000).kind == "flat"
    assert build_index(x, kind="auto", approx_above=1000).kind == "ivf"


def test_approximate_index_leave_one_out():
    from ganaudit.index import build_index

    x = np.random.default_rng(5).normal(size=(3000, 8)).astype(np.float32)
    index = build_index(x, kind="hnsw")
    _, idx = index.search(x[:100], 2, exclude=np.arange(100))
    assert not (idx == np.arange(100)[:, None]).any()
