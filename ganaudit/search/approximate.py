"""Approximate FAISS indexes (IVF-Flat, HNSW-Flat) for training sets too large for exact search.

Their recall is never assumed: :func:`recall_at_1` measures it against exact search on a
sample of queries, streaming the database block by block, and the audit reports it.
:func:`ganaudit.search.index.build_index` chooses between exact and approximate search and
keeps approximate indexes in the index cache.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ganaudit.features import as_features
from ganaudit.search.index import (
    DEFAULT_BLOCK_SIZE, FlatIndex, SearchIndex, faiss_seed, flat_blocks, gpu_resources, merge_block_results,
)

log = logging.getLogger(__name__)

HNSW_NEIGHBOURS, HNSW_EF_SEARCH = 32, 128
IVF_NPROBE = 32


def approx_params(kind: str, ntotal: int) -> dict:
    """The parameters of an approximate index over ``ntotal`` rows (part of its cache key)."""
    if kind == "hnsw":
        return {"neighbours": HNSW_NEIGHBOURS, "ef_search": HNSW_EF_SEARCH}
    nlist = int(max(1, min(4 * np.sqrt(ntotal), ntotal // 39)))
    return {"nlist": nlist, "nprobe": min(nlist, IVF_NPROBE)}


class ApproxIndex(SearchIndex):
    """An approximate FAISS index (IVF-Flat or HNSW-Flat).

    For training sets too large for exact search to be quick. Its recall is not assumed:
    :func:`recall_at_1` measures it against exact search on a sample of queries, and the
    audit reports the figure. Make one with :meth:`build` or :meth:`load`.
    """

    def __init__(self, index, metric: str, kind: str, gpu: int | None = None, resources=None):
        super().__init__(metric, index.ntotal, index.d, gpu, resources)
        self._index, self.kind = index, kind

    @classmethod
    def build(cls, database: np.ndarray, metric: str = "l2", kind: str = "ivf", seed: int = 0,
              gpu: int | None = None) -> "ApproxIndex":
        """Train (IVF: k-means with ``seed``) and fill an index over ``database``."""
        import faiss

        database = as_features(database, "database")
        dim = database.shape[1]
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        params = approx_params(kind, database.shape[0])
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
        resources = gpu_resources(gpu)
        if gpu is not None:
            index = faiss.index_cpu_to_gpu(resources, gpu, index)
        if kind == "ivf":
            index.cp.seed = faiss_seed(seed)  # after the move: a GPU copy does not take the clustering parameters
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
            index.nprobe = approx_params(kind, index.ntotal)["nprobe"]
        elif kind == "hnsw":
            index.hnsw.efSearch = HNSW_EF_SEARCH
            gpu = None
        resources = gpu_resources(gpu)
        if gpu is not None:
            index = faiss.index_cpu_to_gpu(resources, gpu, index)
        return cls(index, metric, kind, gpu, resources)

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, idx = self._index.search(queries, k)
        missing = idx < 0  # fewer than k candidates probed: treat as infinitely far
        dist[missing] = -np.inf if self.metric == "ip" else np.inf
        idx[missing] = 0
        return dist, idx


def recall_at_1(index: SearchIndex, database: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of queries whose first result from ``index`` is the exact nearest row.

    The exact reference streams the database one block at a time (on the index's GPU, with
    its resources), so it never holds a second copy of the training set.
    """
    if isinstance(index, FlatIndex):
        return 1.0
    queries, database = as_features(queries, "queries"), as_features(database, "database")
    _, approx = index.search(queries, 1)
    blocks = flat_blocks(database, index.metric, DEFAULT_BLOCK_SIZE, index.gpu, index.gpu_resources)
    _, exact = merge_block_results(blocks, queries, 1, keep_max=index.metric == "ip")
    return float(np.mean(approx[:, 0] == exact[:, 0]))
