"""Exact k-nearest-neighbour search with FAISS, streaming the database in blocks.

Nothing here builds an N×N matrix: the database passes through a flat index one block at a
time and a heap keeps the k best per query (the pattern of faiss'
``contrib.exhaustive_search.knn_ground_truth``). Peak memory is about
``block_size × D`` floats for the block plus ``Nq × k`` for the results, whatever the size
of the database.

Metrics:
    ``"l2"``: Euclidean distance (not squared), ascending.
    ``"ip"``: inner product (cosine similarity for L2-normalised features), descending.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

METRICS = ("l2", "ip")
DEFAULT_BLOCK_SIZE = 65_536


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


class FlatIndex:
    """An exact FAISS index over a feature array, split into blocks that are built once.

    Querying merges the blocks' results in a heap, so no block's search ever allocates more
    than ``queries × block_size`` distances, and repeated searches (one batch of generated
    samples at a time) do not copy the database again.
    """

    kind = "flat"

    def __init__(self, database: np.ndarray, metric: str = "l2", block_size: int = DEFAULT_BLOCK_SIZE):
        import faiss

        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        database = _as_features(database, "database")
        if database.shape[0] == 0:
            raise ValueError("database is empty")
        self.metric = metric
        self.ntotal, self.dim = database.shape
        self._blocks = []
        for start in range(0, self.ntotal, block_size):
            block = database[start : start + block_size]
            index = faiss.IndexFlatIP(self.dim) if metric == "ip" else faiss.IndexFlatL2(self.dim)
            index.add(block)
            self._blocks.append((start, index))

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

        queries = _as_features(queries, "queries")
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
    database = _as_features(database, "database")
    queries = _as_features(queries, "queries")
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


class ApproxIndex:
    """An approximate FAISS index (IVF-Flat or HNSW-Flat) with FlatIndex's search interface.

    For training sets too large for exact search to be quick. Its recall is not assumed:
    ``recall_at_1`` measures it against exact search on a sample of queries, and the audit
    reports the figure.
    """

    def __init__(self, database: np.ndarray, metric: str = "l2", kind: str = "ivf", seed: int = 0):
        import faiss

        database = _as_features(database, "database")
        self.metric, self.kind = metric, kind
        self.ntotal, self.dim = database.shape
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        if kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(self.dim, HNSW_NEIGHBOURS, faiss_metric)
            self._index.hnsw.efSearch = HNSW_EF_SEARCH
        elif kind == "ivf":
            nlist = int(max(1, min(4 * np.sqrt(self.ntotal), self.ntotal // 39)))
            quantizer = faiss.IndexFlatIP(self.dim) if metric == "ip" else faiss.IndexFlatL2(self.dim)
            self._index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss_metric)
            self._index.cp.seed = seed
            self._index.train(database)
            self._index.nprobe = min(nlist, IVF_NPROBE)
        else:
            raise ValueError(f"approximate index kind must be ivf or hnsw, got {kind!r}")
        self._index.add(database)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as ``FlatIndex.search`` (approximate neighbours; -1 ids become misses)."""
        queries = _as_features(queries, "queries")
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
                approx_above: int = 1_000_000, seed: int = 0):
    """Exact (FlatIndex) by default; IVF past ``approx_above`` rows with ``kind="auto"``."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    if kind == "auto":
        kind = "ivf" if database.shape[0] > approx_above else "flat"
    if kind == "flat":
        return FlatIndex(database, metric)
    return ApproxIndex(database, metric, kind, seed)


def recall_at_1(index, database: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of queries whose first result from ``index`` is the exact nearest row."""
    if isinstance(index, FlatIndex):
        return 1.0
    _, approx = index.search(queries, 1)
    _, exact = FlatIndex(database, index.metric).search(queries, 1)
    return float(np.mean(approx[:, 0] == exact[:, 0]))
