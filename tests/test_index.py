import numpy as np
import pytest
from sklearn.metrics import pairwise_distances

from ganaudit.search.index import knn


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
    from ganaudit.search.index import build_index
    from ganaudit.search.approximate import recall_at_1

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
    from ganaudit.search.index import build_index

    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    assert build_index(x, kind="auto", approx_above=5000).kind == "flat"
    assert build_index(x, kind="auto", approx_above=1000).kind == "ivf"


def test_approximate_index_leave_one_out():
    from ganaudit.search.index import build_index

    x = np.random.default_rng(5).normal(size=(3000, 8)).astype(np.float32)
    index = build_index(x, kind="hnsw")
    _, idx = index.search(x[:100], 2, exclude=np.arange(100))
    assert not (idx == np.arange(100)[:, None]).any()


def _clustered(seed, n=6_000, d=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d)).astype(np.float32) * 4
    return (centres[rng.integers(0, 40, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_is_cached_and_read_back(tmp_path, kind):
    from ganaudit.search.index import build_index

    x = _clustered(7)
    built = build_index(x, kind=kind, cache_dir=tmp_path)
    (written,) = tmp_path.glob(f"{kind}-*.faiss")  # one file, named by what it was built from
    assert not built.cached and written.with_name(written.name + ".json").is_file()
    again = build_index(x, kind=kind, cache_dir=tmp_path)
    assert again.cached and again.kind == kind and again.ntotal == len(x)
    d1, i1 = built.search(x[:200], 5)
    d2, i2 = again.search(x[:200], 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def test_index_cache_is_rebuilt_when_corrupt_and_kept_apart_for_other_settings(tmp_path, caplog):
    from ganaudit.search.index import build_index

    x = _clustered(8)
    build_index(x, kind="ivf", cache_dir=tmp_path)
    (path,) = tmp_path.glob("ivf-*.faiss")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the payload
    path.write_bytes(bytes(data))
    assert not build_index(x, kind="ivf", cache_dir=tmp_path).cached
    assert "corrupt" in caplog.text
    assert build_index(x, kind="ivf", cache_dir=tmp_path).cached  # rewritten intact
    other_seed = build_index(x, kind="ivf", seed=1, cache_dir=tmp_path)  # other k-means: other index
    assert not other_seed.cached
    assert build_index(x, kind="ivf", cache_dir=tmp_path).cached  # both kept, each under its own name
    fewer = build_index(x[:5_000], kind="ivf", seed=1, cache_dir=tmp_path)
    assert not fewer.cached and fewer.ntotal == 5_000


def test_index_cache_is_rebuilt_for_features_of_the_same_shape_but_other_values(tmp_path):
    from ganaudit.search.index import build_index

    x = _clustered(12)
    build_index(x, kind="ivf", cache_dir=tmp_path)
    other = x.copy()
    other[123, 4] += 1.0  # one value changed
    index = build_index(other, kind="ivf", cache_dir=tmp_path)
    assert not index.cached
    dist, idx = index.search(other[120:130], 1)
    assert idx[:, 0].tolist() == list(range(120, 130)) and np.allclose(dist, 0.0, atol=1e-3)


def test_an_unparseable_index_file_is_rebuilt(tmp_path, caplog):
    import hashlib
    import json

    from ganaudit.search.index import build_index

    x = _clustered(13)
    build_index(x, kind="hnsw", cache_dir=tmp_path)
    (path,) = tmp_path.glob("hnsw-*.faiss")
    path.write_bytes(b"not a faiss index")  # with a record that vouches for it
    record = path.with_name(path.name + ".json")
    meta = json.loads(record.read_text())
    record.write_text(json.dumps(meta | {"sha256": hashlib.sha256(b"not a faiss index").hexdigest()}))
    index = build_index(x, kind="hnsw", cache_dir=tmp_path)
    assert not index.cached and index.ntotal == len(x) and "could not be read" in caplog.text
    assert build_index(x, kind="hnsw", cache_dir=tmp_path).cached  # written again, intact


def test_a_cache_that_cannot_be_written_does_not_stop_the_search(tmp_path, caplog):
    from ganaudit.search.index import build_index

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    index = build_index(_clustered(14), kind="ivf", cache_dir=blocker)
    assert not index.cached and index.search(_clustered(14)[:5], 1)[1].shape == (5, 1)
    assert "could not cache the ivf index" in caplog.text


def test_flat_index_is_never_written(tmp_path):
    from ganaudit.search.index import build_index

    index = build_index(_clustered(9, n=500), kind="flat", cache_dir=tmp_path)
    assert index.kind == "flat" and not index.cached and list(tmp_path.iterdir()) == []


class _FakeGpuFaiss:
    """Stands in for a GPU build of faiss: records what is moved to the GPU, keeps it on the CPU."""

    def __init__(self, real, n_gpus=1):
        self._real, self.n_gpus, self.moved = real, n_gpus, []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def StandardGpuResources(self):  # noqa: N802 (faiss's name)
        return "resources"

    def get_num_gpus(self):
        return self.n_gpus

    def index_cpu_to_gpu(self, resources, device, index):
        assert resources == "resources"
        self.moved.append((device, type(index).__name__))
        return index

    def index_gpu_to_cpu(self, index):
        return index


@pytest.fixture()
def fake_gpu_faiss(monkeypatch):
    import sys

    import faiss

    fake = _FakeGpuFaiss(faiss)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    return fake


def test_gpu_is_used_only_for_cuda_devices_with_a_gpu_faiss(fake_gpu_faiss, monkeypatch):
    import sys

    import torch

    from ganaudit.search.index import faiss_gpu_id

    assert faiss_gpu_id(torch.device("cuda", 1)) == 1
    assert faiss_gpu_id(torch.device("cuda")) == 0
    assert faiss_gpu_id(torch.device("cpu")) is None
    fake_gpu_faiss.n_gpus = 0  # a GPU build on a machine without a GPU
    assert faiss_gpu_id(torch.device("cuda")) is None
    monkeypatch.setitem(sys.modules, "faiss", fake_gpu_faiss._real)  # faiss-cpu: no GPU functions
    assert faiss_gpu_id(torch.device("cuda")) is None


def test_gpu_indexes_are_moved_to_the_gpu_and_cached_as_cpu_copies(fake_gpu_faiss, tmp_path):
    from ganaudit.search.index import build_index
    from ganaudit.search.approximate import recall_at_1

    x = _clustered(10)
    flat = build_index(x, kind="flat", gpu=0)
    assert flat.device == "cuda:0" and fake_gpu_faiss.moved == [(0, "IndexFlatL2")]
    ivf = build_index(x, kind="ivf", gpu=0, cache_dir=tmp_path)
    assert ivf.device == "cuda:0" and fake_gpu_faiss.moved[-1] == (0, "IndexIVFFlat")
    assert 0.9 <= recall_at_1(ivf, x, x[:200]) <= 1.0  # its exact reference on the GPU too
    assert fake_gpu_faiss.moved[-1] == (0, "IndexFlatL2")
    again = build_index(x, kind="ivf", gpu=0, cache_dir=tmp_path)
    assert again.cached and again.device == "cuda:0" and fake_gpu_faiss.moved[-1] == (0, "IndexIVFFlat")
    hnsw = build_index(x, kind="hnsw", gpu=0)  # faiss has no GPU HNSW
    assert hnsw.device == "cpu" and fake_gpu_faiss.moved[-1] == (0, "IndexIVFFlat")


@pytest.mark.gpu
def test_real_gpu_search_equals_cpu_search():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.skip("needs faiss-gpu and a GPU")
    from ganaudit.search.index import build_index

    x = _clustered(11)
    d_cpu, i_cpu = build_index(x, kind="flat").search(x[:500], 5)
    d_gpu, i_gpu = build_index(x, kind="flat", gpu=0).search(x[:500], 5)
    np.testing.assert_array_equal(i_cpu[:, 0], i_gpu[:, 0])
    np.testing.assert_allclose(d_cpu, d_gpu, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_real_gpu_ivf_is_seeded_cached_and_measured(tmp_path):
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.skip("needs faiss-gpu and a GPU")
    from ganaudit.search.index import build_index
    from ganaudit.search.approximate import recall_at_1

    x = _clustered(15)
    first = build_index(x, kind="ivf", seed=3, gpu=0, cache_dir=tmp_path)
    second = build_index(x, kind="ivf", seed=3, gpu=0)  # the same seed: the same k-means
    again = build_index(x, kind="ivf", seed=3, gpu=0, cache_dir=tmp_path)
    assert first.device == again.device == "cuda:0" and again.cached
    queries = x[:300]
    ids = [index.search(queries, 3)[1] for index in (first, second, again)]
    np.testing.assert_array_equal(ids[0], ids[1])
    np.testing.assert_array_equal(ids[0], ids[2])
    assert recall_at_1(again, x, queries) >= 0.9
