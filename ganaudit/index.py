"""Exact k-nearest-neighbour search with FAISS, streaming the database in blocks.

Nothing here builds an N×N matrix: the database passes through a flat index one block at a
time and a heap keeps the k best per query (the pattern of faiss'
``contrib.exhaustive_search.knn_ground_truth``). Peak memory is about
``block_size × D`` floats for the block plus ``Nq × k`` for the results, whatever the size
of the database.

Metrics:
    ``"l2"``: Euclidean distance (not squared), ascending.
    ``"ip"``: inner product (cosine similarity for L2-normalised features), descending.

GPU: with a GPU build of faiss (``faiss-gpu``) and a CUDA device, ``build_index(...,
gpu=ID)`` searches on that GPU (IVF is trained there too; HNSW has no GPU form and stays on
the CPU). :func:`faiss_gpu_id` says whether that is possible for a torch device.

Approximate indexes cost a k-means (IVF) or a graph (HNSW) to build, so ``build_index`` can
keep them in a cache folder, content-addressed (the file name is a hash of the features and
the settings), checksummed and written atomically (:mod:`ganaudit.index_cache`); one that
is unreadable is rebuilt.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ganaudit.features import as_features

log = logging.getLogger(__name__)

METRICS = ("l2", "ip")
DEFAULT_BLOCK_SIZE = 65_536


class FlatIndex:
    """An exact FAISS index over a feature array, split into blocks that are built once.

    Querying merges the blocks' results in a heap, so no block's search ever allocates more
    than ``queries × block_size`` distances, and repeated searches (one batch of generated
    samples at a time) do not copy the database again.
    """

    kind = "flat"
    cached = False  # a flat index is a copy of its features: never read from a file

    def __init__(self, database: np.ndarray, metric: str = "l2", block_size: int = DEFAULT_BLOCK_SIZE,
                 gpu: int | None = None):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        database = as_features(database, "database")
        if database.shape[0] == 0:
            raise ValueError("database is empty")
        self.metric = metric
        self.ntotal, self.dim = database.shape
        self.gpu, self._gpu_resources = gpu, _gpu_resources(gpu)
        self._blocks = []
        for start in range(0, self.ntotal, block_size):
            index = _flat_faiss_index(self.dim, metric, gpu, self._gpu_resources)
            index.add(database[start : start + block_size])
            self._blocks.append((start, index))

    @property
    def device(self) -> str:
        return _device_name(self.gpu)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the k best database rows of each query, best first.

        Args:
            queries: ``(M, D)`` float array.
            k: neighbours per query.
            exclude: optional ``(M,)`` int array; row i never returns database row
                ``exclude[i]`` (leave-one-out search when queries come from the database).

        Returns:
            ``(distances, indices)``, ``(M, k)`` float32 and int64. Euclidean distances for
            ``"l2"``, inner products for ``"ip"``.
        """
        import faiss

        queries = as_features(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"dimension mismatch: database has D={self.dim}, queries D={queries.shape[1]}")
        n_avail = self.ntotal - (1 if exclude is not None else 0)
        if not 1 <= k <= n_avail:
            raise ValueError(f"k must be in [1, {n_avail}], got {k}")
        k_search = k + 1 if exclude is not None else k
        heap = faiss.ResultHeap(queries.shape[0], k_search, keep_max=self.metric == "ip")
        for start, index in self._blocks:
            dist, idx = index.search(queries, min(k_search, index.ntotal))
            heap.add_result(dist, idx + start)
        heap.finalize()
        dist, idx = heap.D, heap.I
        if exclude is not None:
            dist, idx = _drop_excluded(dist, idx, np.asarray(exclude), k)
        if self.metric == "l2":
            dist = np.sqrt(np.maximum(dist, 0.0, out=dist), out=dist)
        return dist, idx


def _flat_faiss_index(dim: int, metric: str, gpu: int | None, resources):
    import faiss

    index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    return index if gpu is None else faiss.index_cpu_to_gpu(resources, gpu, index)


def knn(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str = "l2",
    block_size: int = DEFAULT_BLOCK_SIZE,
    exclude_self: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Find the k nearest database rows of each query row.

    Args:
        database: ``(N, D)`` float array searched over.
        queries: ``(M, D)`` float array. With ``exclude_self`` it must be the database
            itself (row i of the queries is row i of the database).
        k: neighbours per query, ``1 <= k <= N`` (``N - 1`` with ``exclude_self``).
        metric: ``"l2"`` or ``"ip"``.
        block_size: database rows per block.
        exclude_self: leave-one-out search: a query never returns its own row.

    Returns:
        ``(distances, indices)``: ``(M, k)`` float32 and ``(M, k)`` int64, best first.
        For ``"l2"`` distances are Euclidean; for ``"ip"`` they are inner products.
    """
    database = as_features(database, "database")
    queries = as_features(queries, "queries")
    exclude = None
    if exclude_self:
        if database.shape[0] != queries.shape[0]:
            raise ValueError("exclude_self needs the queries to be the database itself")
        exclude = np.arange(queries.shape[0])
    return FlatIndex(database, metric, block_size).search(queries, k, exclude=exclude)


def _drop_excluded(
    dist: np.ndarray, idx: np.ndarray, exclude: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's excluded row from its k+1 results (or the last one if absent).

    The self match is normally first, but exact duplicates in the data can tie with it and
    come in any order, so the column is found by index rather than assumed.
    """
    is_self = idx == exclude[:, None]
    # A row without its own index (duplicates pushed it out) drops its last result.
    is_self[~is_self.any(axis=1), -1] = True
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(idx.shape[0]), first] = False
    return dist[keep].reshape(-1, k), idx[keep].reshape(-1, k)


INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
HNSW_NEIGHBOURS, HNSW_EF_SEARCH = 32, 128
IVF_NPROBE = 32


def faiss_gpu_id(device) -> int | None:
    """The GPU faiss should search on for a torch ``device``, or None for the CPU.

    None unless the device is CUDA and faiss is a GPU build that sees a GPU; for a CUDA
    device with faiss-cpu installed it logs how to get GPU search.
    """
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        log.info("faiss has no GPU support here (faiss-cpu): the training index is searched on the CPU; "
                 "install faiss-gpu for GPU search")
        return None
    index = getattr(device, "index", None)
    return 0 if index is None else int(index)


def _gpu_resources(gpu: int | None):
    if gpu is None:
        return None
    import faiss

    return faiss.StandardGpuResources()


def _device_name(gpu: int | None) -> str:
    return "cpu" if gpu is None else f"cuda:{gpu}"


def _approx_params(kind: str, ntotal: int) -> dict:
    """The parameters of an approximate index over ``ntotal`` rows (part of its cache key)."""
    if kind == "hnsw":
        return {"neighbours": HNSW_NEIGHBOURS, "ef_search": HNSW_EF_SEARCH}
    nlist = int(max(1, min(4 * np.sqrt(ntotal), ntotal // 39)))
    return {"nlist": nlist, "nprobe": min(nlist, IVF_NPROBE)}


class ApproxIndex:
    """An approximate FAISS index (IVF-Flat or HNSW-Flat) with FlatIndex's search interface.

    For training sets too large for exact search to be quick. Its recall is not assumed:
    ``recall_at_1`` measures it against exact search on a sample of queries, and the audit
    reports the figure. Make one with :meth:`build` or :meth:`load`.
    """

    cached = False  # True when read back from the index cache

    def __init__(self, index, metric: str, kind: str, gpu: int | None = None, resources=None):
        self._index, self.metric, self.kind = index, metric, kind
        self.ntotal, self.dim = index.ntotal, index.d
        self.gpu, self._gpu_resources = gpu, resources

    @property
    def device(self) -> str:
        return _device_name(self.gpu)

    @classmethod
    def build(cls, database: np.ndarray, metric: str = "l2", kind: str = "ivf", seed: int = 0,
              gpu: int | None = None) -> "ApproxIndex":
        """Train (IVF: k-means with ``seed``) and fill an index over ``database``."""
        import faiss

        database = as_features(database, "database")
        dim = database.shape[1]
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        params = _approx_params(kind, database.shape[0])
        if kind == "hnsw":
            if gpu is not None:
                log.info("faiss has no GPU HNSW index: building and searching it on the CPU")
                gpu = None
            index = faiss.IndexHNSWFlat(dim, params["neighbours"], faiss_metric)
            index.hnsw.efSearch = params["ef_search"]
        elif kind == "ivf":
            quantizer = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss_metric)
            index.nprobe = params["nprobe"]
        else:
            raise ValueError(f"approximate index kind must be ivf or hnsw, got {kind!r}")
        resources = _gpu_resources(gpu)
        if gpu is not None:
            index = faiss.index_cpu_to_gpu(resources, gpu, index)
        if kind == "ivf":
            index.cp.seed = seed  # after the move: a GPU copy does not take the clustering parameters
            index.train(database)
        index.add(database)
        return cls(index, metric, kind, gpu, resources)

    def save(self, path: Path) -> None:
        """Write the index with faiss's own writer (a CPU copy when it lives on a GPU)."""
        import faiss

        cpu = self._index if self.gpu is None else faiss.index_gpu_to_cpu(self._index)
        faiss.write_index(cpu, str(path))

    @classmethod
    def load(cls, path: Path, metric: str, kind: str, gpu: int | None = None) -> "ApproxIndex":
        """Read an index :meth:`save` wrote; search parameters are set afresh."""
        import faiss

        index = faiss.read_index(str(path))
        if kind == "ivf":
            index.nprobe = _approx_params(kind, index.ntotal)["nprobe"]
        elif kind == "hnsw":
            index.hnsw.efSearch = HNSW_EF_SEARCH
            gpu = None
        resources = _gpu_resources(gpu)
        if gpu is not None:
            index = faiss.index_cpu_to_gpu(resources, gpu, index)
        return cls(index, metric, kind, gpu, resources)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as ``FlatIndex.search`` (approximate neighbours; -1 ids become misses)."""
        queries = as_features(queries, "queries")
        k_search = k + 1 if exclude is not None else k
        dist, idx = self._index.search(queries, k_search)
        missing = idx < 0  # fewer than k candidates probed: treat as infinitely far
        dist[missing] = -np.inf if self.metric == "ip" else np.inf
        idx[missing] = 0
        if exclude is not None:
            dist, idx = _drop_excluded(dist, idx, np.asarray(exclude), k)
        if self.metric == "l2":
            dist = np.sqrt(np.maximum(dist, 0.0, out=dist), out=dist)
        return dist, idx


def build_index(database: np.ndarray, metric: str = "l2", kind: str = "auto",
                approx_above: int = 1_000_000, seed: int = 0, gpu: int | None = None,
                cache_dir: Path | None = None):
    """Exact (FlatIndex) by default; IVF past ``approx_above`` rows with ``kind="auto"``.

    Args:
        database: ``(N, D)`` float features.
        metric: ``"l2"`` or ``"ip"``.
        kind: ``"auto"``, ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        approx_above: with ``"auto"``, the row count above which IVF is used.
        seed: IVF's k-means seed.
        gpu: a GPU id from :func:`faiss_gpu_id`, or None for the CPU.
        cache_dir: where approximate indexes are kept between runs, named by a hash of
            everything they are built from (the settings and the features' bytes):
            ``<kind>-<hash>.faiss``. A flat index is only a copy of its features and is never
            written.

    Returns:
        A ``FlatIndex`` or ``ApproxIndex``; ``.cached`` says whether it came from the file.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    if kind == "auto":
        kind = "ivf" if database.shape[0] > approx_above else "flat"
    if kind == "flat":
        return FlatIndex(database, metric, gpu=gpu)
    import faiss

    from ganaudit import index_cache

    database = as_features(database, "database")
    settings = (kind, metric, seed, faiss.__version__, sorted(_approx_params(kind, database.shape[0]).items()))
    key = index_cache.key_of(database, settings)
    path = Path(cache_dir) / f"{kind}-{key[:32]}.faiss" if cache_dir is not None else None
    index = index_cache.read(path, key, lambda p: ApproxIndex.load(p, metric, kind, gpu)) if path else None
    if index is not None:
        index.cached = True
        return index
    index = ApproxIndex.build(database, metric, kind, seed, gpu)
    if path:
        index_cache.write(path, key, index.save, f"{kind} index")
    return index


def recall_at_1(index, database: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of queries whose first result from ``index`` is the exact nearest row."""
    if isinstance(index, FlatIndex):
        return 1.0
    import faiss

    queries, database = as_features(queries, "queries"), as_features(database, "database")
    _, approx = index.search(queries, 1)
    # The exact reference streams the database one block at a time (on the index's GPU, with
    # its resources), so it never holds a second copy of the training set.
    heap = faiss.ResultHeap(queries.shape[0], 1, keep_max=index.metric == "ip")
    for start in range(0, database.shape[0], DEFAULT_BLOCK_SIZE):
        block = _flat_faiss_index(index.dim, index.metric, index.gpu, index._gpu_resources)
        block.add(database[start : start + DEFAULT_BLOCK_SIZE])
        dist, idx = block.search(queries, 1)
        heap.add_result(dist, idx + start)
    heap.finalize()
    return float(np.mean(approx[:, 0] == heap.I[:, 0]))
