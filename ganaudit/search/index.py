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

Approximate indexes (:mod:`ganaudit.search.approximate`) cost a k-means (IVF) or a graph
(HNSW) to build, so ``build_index`` can
keep them in a cache folder, content-addressed (the file name is a hash of the features and
the settings), checksummed and written atomically (:mod:`ganaudit.search.index_cache`); one that
is unreadable is rebuilt.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ganaudit.features import as_features, block_rows, is_mapped, release_pages

log = logging.getLogger(__name__)

METRICS = ("l2", "ip")
DEFAULT_BLOCK_SIZE = 65_536


class SearchIndex:
    """What every training-set index offers: :meth:`search` for the k best rows of each query.

    Subclasses build the FAISS structure and implement :meth:`_search_raw`; the checks, the
    leave-one-out exclusion and the conversion of squared L2 to distances happen here once.

    Attributes:
        metric: ``"l2"`` or ``"ip"``.
        ntotal, dim: rows and columns of the indexed features.
        gpu: the GPU id it lives on, or None for the CPU.
        gpu_resources: faiss' ``StandardGpuResources`` for that GPU (None on the CPU).
        kind: ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        cached: True when it was read back from the index cache.
    """

    kind = "flat"
    cached = False

    def __init__(self, metric: str, ntotal: int, dim: int, gpu: int | None, resources=None):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric, self.ntotal, self.dim, self.gpu = metric, ntotal, dim, gpu
        self.gpu_resources = resources if resources is not None or gpu is None else gpu_resources(gpu)

    @property
    def device(self) -> str:
        return "cpu" if self.gpu is None else f"cuda:{self.gpu}"

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
        queries = as_features(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"dimension mismatch: database has D={self.dim}, queries D={queries.shape[1]}")
        n_avail = self.ntotal - (1 if exclude is not None else 0)
        if not 1 <= k <= n_avail:
            raise ValueError(f"k must be in [1, {n_avail}], got {k}")
        raw_k = k + 1 if exclude is not None else k
        step = block_rows(queries.shape[1], DEFAULT_BLOCK_SIZE)
        if is_mapped(queries) and queries.shape[0] > step:
            # memory-mapped queries (a training set against the samples, for the MIA) are read
            # one block at a time and their pages released, as a mapped database is
            parts = []
            for start in range(0, queries.shape[0], step):
                block = np.array(queries[start : start + step])
                release_pages(queries)
                parts.append(self._search_raw(block, raw_k))
            dist, idx = np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])
        else:
            dist, idx = self._search_raw(queries, raw_k)
        if exclude is not None:
            dist, idx = _drop_excluded(dist, idx, np.asarray(exclude), k)
        if self.metric == "l2":
            dist = np.sqrt(np.maximum(dist, 0.0, out=dist), out=dist)
        return dist, idx

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(M, k)`` squared L2 distances (or inner products) and row indices, best first."""
        raise NotImplementedError


class FlatIndex(SearchIndex):
    """An exact search over a feature array, one block of rows at a time.

    On the CPU nothing is copied: each search walks the caller's array (a memory-mapped
    cache file, typically) in blocks of ``block_size`` rows with ``faiss.knn`` (the function
    ``IndexFlat.search`` calls, so the results are the same) and merges the blocks' results in
    a heap; the pages of a memory-mapped array are released after each block, so a search
    holds about one block resident, never the whole matrix. On a GPU the blocks are copied to
    the device once, when the index is built, and stay there.
    """

    kind = "flat"
    cached = False  # a flat index is its features: never read from a file

    def __init__(self, database: np.ndarray, metric: str = "l2", block_size: int = DEFAULT_BLOCK_SIZE,
                 gpu: int | None = None):
        database = as_features(database, "database")
        super().__init__(metric, database.shape[0], database.shape[1], gpu)
        self.block_size = int(block_size)
        if gpu is None:
            self._database, self._blocks = database, None
        else:
            self._database = None
            self._blocks = list(flat_blocks(database, metric, block_size, gpu, self.gpu_resources))
            release_pages(database)

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._blocks is not None:
            return merge_block_results(self._blocks, queries, k, keep_max=self.metric == "ip")
        return streamed_knn(self._database, queries, k, self.metric, self.block_size)


def streamed_knn(database: np.ndarray, queries: np.ndarray, k: int, metric: str,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(M, k)`` squared L2 distances (or inner products) and rows, best first, of ``queries``
    against ``database`` read block by block in place (no copy of the database is made).

    Both are C-contiguous float32. A memory-mapped database has its pages released after each
    block.
    """
    import faiss

    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=metric == "ip")
    if is_mapped(database):  # a block's pages stay resident until it is searched: keep it small
        block_size = block_rows(database.shape[1], block_size)
    for start in range(0, database.shape[0], block_size):
        block = database[start : start + block_size]
        dist, idx = faiss.knn(queries, block, min(k, block.shape[0]), metric=faiss_metric)
        heap.add_result(dist, idx + start)
        release_pages(database)
    heap.finalize()
    return heap.D, heap.I


def grouped_knn(database: np.ndarray, groups: np.ndarray, queries: np.ndarray, ks: np.ndarray,
                block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The ``ks[g]`` nearest database rows of group ``g`` for every query and group, in one pass.

    The same as one exact Euclidean search per group over ``database[groups == g]``, without
    gathering any group's rows: the database is read block by block in place (a memory map's
    pages released after each block), and each block's rows of each group are searched and
    merged into that group's heap.

    Args:
        database: ``(N, D)`` float32, C-contiguous.
        groups: ``(N,)`` int group of each row, in ``[0, G)``.
        queries: ``(M, D)`` float32, C-contiguous.
        ks: ``(G,)`` neighbours per group; ``ks[g]`` at most the size of group ``g`` (0 for an
            empty group, which gets ``(M, 0)`` arrays).

    Returns:
        ``(distances, rows)``: two lists of G arrays ``(M, ks[g])``, Euclidean distances
        (float32) and database row indices (int64), best first.
    """
    import faiss

    ks = np.asarray(ks, dtype=np.int64)
    heaps = [faiss.ResultHeap(queries.shape[0], int(k), keep_max=False) if k > 0 else None for k in ks]
    if is_mapped(database):
        block_size = block_rows(database.shape[1], block_size)
    for start in range(0, database.shape[0], block_size):
        block = database[start : start + block_size]
        block_groups = groups[start : start + block_size]
        for g in np.unique(block_groups):
            if not 0 <= g < len(heaps) or heaps[g] is None:  # a group nobody asked for
                continue
            rows = np.flatnonzero(block_groups == g)
            dist, idx = faiss.knn(queries, np.ascontiguousarray(block[rows]), min(int(ks[g]), rows.size),
                                  metric=faiss.METRIC_L2)
            heaps[g].add_result(dist, (rows + start)[idx])
        release_pages(database)
    distances, indices = [], []
    for heap in heaps:
        if heap is None:
            distances.append(np.zeros((queries.shape[0], 0), np.float32))
            indices.append(np.zeros((queries.shape[0], 0), np.int64))
            continue
        heap.finalize()
        distances.append(np.sqrt(np.maximum(heap.D, 0.0)))
        indices.append(heap.I)
    return distances, indices


def flat_blocks(database: np.ndarray, metric: str, block_size: int, gpu: int | None, resources):
    """Yield ``(first row, exact faiss index over rows [first, first + block_size))``.

    A generator: a caller that consumes it lazily holds one block at a time.
    """
    import faiss

    for start in range(0, database.shape[0], block_size):
        index = faiss.IndexFlatIP(database.shape[1]) if metric == "ip" else faiss.IndexFlatL2(database.shape[1])
        if gpu is not None:
            index = faiss.index_cpu_to_gpu(resources, gpu, index)
        index.add(database[start : start + block_size])
        yield start, index


def merge_block_results(blocks, queries: np.ndarray, k: int, keep_max: bool) -> tuple[np.ndarray, np.ndarray]:
    """Search every ``(first row, faiss index)`` block and keep each query's k best in a heap."""
    import faiss

    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=keep_max)
    for start, index in blocks:
        dist, idx = index.search(queries, min(k, index.ntotal))
        heap.add_result(dist, idx + start)
    heap.finalize()
    return heap.D, heap.I


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


def faiss_seed(seed: int) -> int:
    """A seed FAISS takes (a C ``int``) from any audit seed in [0, 2**63): the same below 2**31 - 1."""
    return int(seed) % (2**31 - 1)


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


def gpu_resources(gpu: int | None):
    if gpu is None:
        return None
    import faiss

    return faiss.StandardGpuResources()


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

    from ganaudit.search import index_cache
    from ganaudit.search.approximate import ApproxIndex, approx_params

    database = as_features(database, "database")
    settings = (kind, metric, seed, faiss.__version__, sorted(approx_params(kind, database.shape[0]).items()))
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
