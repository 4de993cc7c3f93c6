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
    import faiss

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    database = _as_features(database, "database")
    queries = _as_features(queries, "queries")
    if database.shape[1] != queries.shape[1]:
        raise ValueError(
            f"dimension mismatch: database has D={database.shape[1]}, queries D={queries.shape[1]}"
        )
    if exclude_self and database.shape[0] != queries.shape[0]:
        raise ValueError("exclude_self needs the queries to be the database itself")
    n_avail = database.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= n_avail:
        raise ValueError(f"k must be in [1, {n_avail}], got {k}")

    k_search = k + 1 if exclude_self else k
    keep_max = metric == "ip"
    heap = faiss.ResultHeap(queries.shape[0], k_search, keep_max=keep_max)
    dim = database.shape[1]
    for start in range(0, database.shape[0], block_size):
        block = database[start : start + block_size]
        index = faiss.IndexFlatIP(dim) if keep_max else faiss.IndexFlatL2(dim)
        index.add(block)
        kb = min(k_search, block.shape[0])
        dist, idx = index.search(queries, kb)
        heap.add_result(dist, idx + start)
    heap.finalize()
    dist, idx = heap.D, heap.I
    if exclude_self:
        dist, idx = _drop_self(dist, idx, k)
    if metric == "l2":
        dist = np.sqrt(np.maximum(dist, 0.0, out=dist), out=dist)
    return dist, idx


def _drop_self(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own row from its k+1 results (or the last one if absent).

    The self match is normally first, but exact duplicates in the data can tie with it and
    come in any order, so the column is found by index rather than assumed.
    """
    rows = np.arange(idx.shape[0])[:, None]
    is_self = idx == rows
    # A row without its own index (duplicates pushed it out) drops its last result.
    is_self[~is_self.any(axis=1), -1] = True
    # Only the first self hit is dropped (defensive: an index appears once per row).
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(idx.shape[0]), first] = False
    return dist[keep].reshape(-1, k), idx[keep].reshape(-1, k)
