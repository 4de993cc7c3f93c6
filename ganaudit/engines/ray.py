"""``--engine ray``: the training set embedded, the samples drawn and the copies searched on a Ray cluster.

Three jobs, each giving exactly what the local engine gives (``ganaudit/engines/__init__.py``):

- **Embedding a training set** (:func:`embed_shards`; ``ganaudit embed``, and ``check``'s
  ``embed_train`` stage). The set's embedding-cache entry (``embedders/cache.py``: key,
  manifest, one chunk file per ``chunk_size`` rows) is split into its shards, one per chunk.
  A Ray Data dataset of the shards that are *missing* from the entry is mapped over an
  actor pool (:class:`_ShardEmbedder`: one GPU each where the cluster has GPUs, else one
  CPU), each actor reading its shard's images with ganaudit's own readers (image folders,
  ``.npy``/``.npz``, WebDataset ``.tar`` shards, Parquet; decode threads run ahead of the
  forward pass) and embedding them in the same batches as the local path. The driver writes
  each shard as it arrives, atomically (``plumbing.write_atomic``), so the driver is the
  only writer and workers need no shared file system. Job-level resume: a job that fails
  (a node lost, the driver killed) is run again, computing only the shards still missing;
  so does a later ``ganaudit embed`` or ``check``. A shard that comes back twice (a retried
  task) is written once.
- **Generated samples** (:meth:`RayEngine.search_generated`): seed ranges of
  ``SAMPLE_RANGE_BATCHES × batch_size`` samples are mapped over actors that load the
  generator and draw sample ``i`` from latent seed ``[s, i]`` (``GeneratorSamples``), so a
  sample is the same image wherever it is drawn; each actor embeds every test-time variant
  (``search.copy_search.embed_variants``) and returns features, never images.
- **Exact search** (:class:`ShardedIndex`): the training copy features are split into the
  same shards, held by search actors; each query batch is searched on every shard (exact
  FAISS, ``search.index.merge_block_results`` within an actor) and the per-shard top-k are
  merged in a ``faiss.ResultHeap`` on the driver: the k best rows of the whole set, as the
  local ``FlatIndex`` finds them.

Calibration (holdout or leave-one-out training queries, at most ``calibration_max``), the
metrics and the gates run on the driver, searching through the same :class:`ShardedIndex`.

Ray is imported here only; without it ``--engine ray`` is an error naming the extra.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganaudit.errors import GanauditError
from ganaudit.features import as_features
from ganaudit.search.index import SearchIndex

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ganaudit[ray]'"
JOB_ATTEMPTS = 3  # runs of one embedding job (each computes only the shards still missing)
SAMPLE_RANGE_BATCHES = 4  # batches of generated samples per seed range (one actor call)


def import_ray():
    """``ray`` (with Ray Data), or GanauditError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise GanauditError(f"--engine ray needs Ray ({e.name} is not installed): {INSTALL_HINT}") from None
    return ray


class RayEngine:
    """The stages of :class:`ganaudit.engines.LocalEngine`, run on a Ray cluster.

    Args:
        address: the cluster (``ray.init(address=...)``): ``auto``, ``HOST:PORT``,
            ``ray://HOST:10001``; None: ``$RAY_ADDRESS``, else a cluster on this machine
            (started for the run and stopped after).
        device: the audit's ``--device``: ``cpu`` keeps the actors off GPUs; otherwise each
            embedding and sampling actor takes one GPU when the cluster has any.
    """

    name = "ray"

    def __init__(self, address: str | None = None, device: str = "auto"):
        self.address, self.device = address, device
        self._started = False
        self._indexes: list[ShardedIndex] = []
        self.ray = None

    def __enter__(self):
        ray = self.ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
                from ganaudit.plumbing import error_line

                where = self.address or os.environ.get("RAY_ADDRESS") or "a cluster on this machine"
                raise GanauditError(f"--ray-address {where}: cannot join the Ray cluster ({error_line(e)}); "
                                    "start one with `ray start --head`, or check the address") from None
            self._started = True
        if not log.isEnabledFor(logging.INFO):  # Ray Data's progress lines only with -v
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ganaudit draws its own
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0)) if self.device != "cpu" else 0
        self.cpus = max(1, int(resources.get("CPU", 1)))
        log.info("ray: %d CPUs, %d GPUs used on the cluster", self.cpus, self.gpus)
        return self

    def __exit__(self, *exc):
        for index in self._indexes:
            index.close()
        if self._started:
            self.ray.shutdown()
        return False

    @property
    def worker_device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    @property
    def actors(self) -> int:
        """Actors an embedding or sampling job may use: one per GPU, else one per CPU."""
        return self.gpus or self.cpus

    # -- embedding ---------------------------------------------------------------------------
    def embed_image_set(self, images, embedder, batch_size: int, cache_dir: Path | None, label: str,
                        progress: bool | None, *, name: str, weights=None) -> np.ndarray:
        """The features of ``images``: the missing shards embedded on the cluster, then the
        entry read as the local engine reads it (``embedders.cache.embed_image_set``).

        Without a cache folder (``--no-cache``) the shards go to a temporary one, removed after.
        """
        from ganaudit.embedders.cache import embed_image_set

        identity = embedder.identity() if not self.gpus else self._remote_identity(name, weights)
        stored = _StoredFeatures(embedder.spec, identity, name)
        holder = tempfile.TemporaryDirectory(prefix="ganaudit-ray-") if cache_dir is None else nullcontext(cache_dir)
        with holder as root:
            embed_shards(self, images, name, weights, stored, batch_size, Path(root), label, progress)
            return embed_image_set(images, stored, batch_size, Path(root), label, progress)

    def _remote_identity(self, name: str, weights) -> dict:
        """The embedder's identity where it runs (a GPU computes in its own precision)."""
        ray = self.ray

        @ray.remote(num_gpus=1 if self.gpus else 0)
        def identity(name, weights, device):
            from ganaudit.embedders import create_embedder

            return create_embedder(name, device, weights).identity()

        return ray.get(identity.remote(name, _str(weights), self.worker_device))

    # -- search --------------------------------------------------------------------------------
    def build_index(self, database, metric: str, kind: str, approx_above: int, seed: int, gpu, cache_dir):
        """A :class:`ShardedIndex` for exact search; approximate kinds are built locally."""
        from ganaudit.search.index import build_index

        if kind == "auto":
            kind = "ivf" if database.shape[0] > approx_above else "flat"
        if kind != "flat":
            log.info("ray: the %s index is built and searched on the driver (only exact search is sharded)", kind)
            return build_index(database, metric, kind, approx_above, seed, gpu=gpu, cache_dir=cache_dir)
        index = ShardedIndex(self.ray, database, metric, workers=self.cpus)
        self._indexes.append(index)
        return index

    def search_generated(self, source, searcher, batch_size: int, label: str, progress: bool | None,
                         keep_copy_features: int, config=None):
        """``search_source``'s result, the samples drawn and embedded on the cluster by seed ranges.

        Sources that are not a generator (``--samples``, or a generator whose batches are
        also tapped for FD spaces) are read on the driver; their search is still sharded.
        """
        from ganaudit.search.copy_search import Matches, SearchedSet, search_source
        from ganaudit.sources.samples import GeneratorSamples

        if config is None or not isinstance(source, GeneratorSamples):
            return search_source(source, searcher, batch_size, label, progress, keep_copy_features=keep_copy_features)
        from ganaudit.progress import progress_bar

        ray = self.ray
        step = batch_size * SAMPLE_RANGE_BATCHES
        ranges = [{"start": s, "stop": min(s + step, len(source))} for s in range(0, len(source), step)]
        dataset = ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
            _SampleEmbedder, fn_constructor_args=(config, searcher.augmentations, self.worker_device),
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(
                min_size=1, max_size=min(self.actors, len(ranges))),
            num_cpus=1, num_gpus=1 if self.gpus else 0)
        parts = {}
        with progress_bar(len(source), label + " (sampling on ray)", progress) as bar:
            for row in dataset.iter_rows():
                start = int(row["start"])
                if start in parts:
                    continue
                parts[start] = pickle.loads(row["payload"])
                bar.update(sum(len(p[0]) for p in parts[start]))
        missing = [r["start"] for r in ranges if r["start"] not in parts]
        if missing:
            raise RuntimeError(f"ray: seed ranges starting at {missing[:5]} came back empty")
        batches = [p for start in sorted(parts) for p in parts[start]]
        feats, copy_feats, matches, labels, contrast = [], [], [], [], []
        kept = 0
        with progress_bar(len(source), label + " (search)", progress) as bar:
            for indices, names, variant_feats, features, batch_labels, batch_contrast in batches:
                contrast.append(batch_contrast)
                found = searcher.search_embedded(names, variant_feats)
                if searcher.refines:  # the few images it aligns are drawn again here (seeded: the same images)
                    found = searcher.refine(found, lambda rows, at=indices: source.images(at[rows]))
                matches.append(found)
                feats.append(features)
                if kept < keep_copy_features:
                    copy_feats.append(variant_feats[0][: keep_copy_features - kept])
                    kept += len(copy_feats[-1])
                labels.append(batch_labels)
                bar.update(len(indices))
        has_labels = all(lab is not None for lab in labels)
        copy = (np.concatenate(copy_feats) if copy_feats
                else np.empty((0, searcher.copy_embedder.spec.dim), np.float32))
        return SearchedSet(np.concatenate(feats), copy, Matches.concatenate(matches),
                           np.concatenate(labels) if has_labels else None, np.concatenate(contrast))


class _StoredFeatures:
    """Stands in for an embedder whose features the cluster computed: same key, no forward pass.

    ``embed_image_set`` reads every chunk of the entry; it calls ``embed`` only for a chunk
    that is missing or corrupt after the job (a corrupt one is deleted, so a rerun embeds it).
    """

    def __init__(self, spec, identity: dict, name: str):
        self.spec, self._identity, self._name = spec, identity, name

    def identity(self) -> dict:
        return self._identity

    def embed(self, images):
        raise GanauditError(f"the embedding cache lost a shard of {self._name} features after the Ray job "
                            "(see the warning above); run the command again to embed it")


@dataclass(frozen=True)
class EmbedJob:
    """What an embedding actor needs to rebuild the image set and the embedder on its node."""

    location: str
    skip_corrupt: bool
    embedder: str
    weights: str | None
    device: str
    batch_size: int
    dim: int


def embed_shards(engine: RayEngine, images, name: str, weights, embedder, batch_size: int, cache_dir: Path,
                 label: str, progress: bool | None, chunk_size: int | None = None) -> dict:
    """Fill the cache entry of ``images`` under ``embedder`` with its missing shards, on the cluster.

    Args:
        engine: an entered :class:`RayEngine`.
        images: the ``ImageSet``; workers open ``images.location`` again.
        name, weights: how workers build the embedder.
        embedder: gives the entry's key (``identity()``) and ``spec.dim``.
        chunk_size: rows per shard for a new entry (default: the cache's chunk size).

    Returns:
        ``{"entry", "shards", "cached", "embedded", "duplicates", "attempts", "seconds"}``: the
        entry folder, how many shards it has, how many were there before, how many this job
        embedded (each written once), how many came back a second time (not written again),
        and the job runs it took.
    """
    from ganaudit.embedders.cache import DEFAULT_CHUNK_SIZE, _Entry, cache_key
    from ganaudit.progress import progress_bar

    ray = engine.ray
    key, material = cache_key(images, embedder)
    entry = _Entry(Path(cache_dir) / "features" / key, material, len(images), embedder.spec.dim,
                   chunk_size or DEFAULT_CHUNK_SIZE)
    shards = entry.chunk_rows()
    present = entry.present_chunks()  # all of them once a check has joined them into one matrix
    job = EmbedJob(str(images.location), bool(images.skip_corrupt), name, _str(weights), engine.worker_device,
                   batch_size, embedder.spec.dim)
    written: set[int] = set()
    duplicates = attempts = 0
    started = time.perf_counter()
    with progress_bar(len(images), label + " (ray)", progress) as bar:
        bar.update(sum(len(shards[i]) for i in present))
        while True:
            todo = [i for i in range(len(shards)) if i not in present and i not in written]
            if not todo:
                break
            attempts += 1
            plan = [{"chunk": i, "start": int(shards[i][0]), "stop": int(shards[i][-1]) + 1} for i in todo]
            dataset = ray.data.from_items(plan, override_num_blocks=len(plan)).map_batches(
                _ShardEmbedder, fn_constructor_args=(job,), batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(engine.actors, len(plan))),
                num_cpus=1, num_gpus=1 if engine.gpus else 0)
            try:
                for row in dataset.iter_rows():
                    i = int(row["chunk"])
                    if i in written or i in present:
                        duplicates += 1
                        continue
                    feats, filled = pickle.loads(row["payload"])
                    entry.write_chunk(i, feats, filled)
                    written.add(i)
                    bar.update(len(shards[i]))
            except Exception as e:  # a lost node or actor: run the job again for what is missing
                if isinstance(e, GanauditError) or "GanauditError: " in str(e) or attempts >= JOB_ATTEMPTS:
                    raise _worker_error(e) from e
                log.warning("ray: embedding job run %d failed (%s); %d of %d shards done, running again "
                            "for the rest", attempts, type(e).__name__, len(written) + len(present), len(shards))
    stats = {"entry": str(entry.path), "shards": len(shards), "cached": len(present), "embedded": len(written),
             "duplicates": duplicates, "attempts": attempts, "seconds": round(time.perf_counter() - started, 3)}
    log.info("%s: %s", label, stats)
    return stats


def _worker_error(error: Exception) -> Exception:
    """A worker's GanauditError (an unreadable image, say) as one line of its own; else unchanged.

    Ray re-raises a worker's exception as a RayTaskError (or Ray Data's UserCodeException)
    whose text is the remote traceback, ending with ``GanauditError: <message>``.
    """
    text = str(error)
    if "GanauditError: " in text:
        return GanauditError(text.rsplit("GanauditError: ", 1)[1].strip().splitlines()[0])
    if isinstance(error, GanauditError):
        return GanauditError(text.strip().splitlines()[-1] if text.strip() else "error in a Ray worker")
    return error


def _str(path) -> str | None:
    return None if path is None else str(path)


def _assigned_cpus() -> int:
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def _limit_threads() -> None:
    """One actor per CPU: torch uses the CPUs Ray gave this actor, not every core."""
    import torch

    torch.set_num_threads(_assigned_cpus())


class _ShardEmbedder:
    """A Ray Data actor: reads a shard of the training set and embeds it (``EmbedJob``)."""

    def __init__(self, job: EmbedJob):
        from ganaudit.embedders import create_embedder
        from ganaudit.sources.datasets import open_image_set

        _limit_threads()
        self.job = job
        self.images = open_image_set(job.location, "--train", skip_corrupt=job.skip_corrupt)
        self.embedder = create_embedder(job.embedder, job.device, job.weights)

    def __call__(self, batch: dict) -> dict:
        from ganaudit.embedders.cache import _embed_rows

        chunks, payloads = [], []
        for chunk, start, stop in zip(batch["chunk"], batch["start"], batch["stop"]):
            rows = np.arange(int(start), int(stop))
            feats, filled = _embed_rows(self.images, self.embedder.embed, self.job.dim, rows, self.job.batch_size,
                                        _NoBar())
            chunks.append(int(chunk))
            payloads.append(pickle.dumps((feats, filled), protocol=pickle.HIGHEST_PROTOCOL))
        return {"chunk": np.array(chunks, dtype=np.int64), "payload": np.array(payloads, dtype=object)}


class _SampleEmbedder:
    """A Ray Data actor: draws seed ranges of generated samples and embeds their variants."""

    def __init__(self, config, augmentations: tuple[str, ...], device: str):
        import torch

        from ganaudit.audit import open_generated
        from ganaudit.embedders import create_copy_embedder, create_embedder

        _limit_threads()
        device = torch.device(device)
        self.source = open_generated(config, device)
        self.embedder = create_embedder(config.embedder, device, config.weights)
        self.copy_embedder = create_copy_embedder(config.copy_embedder, self.embedder, device, config.copy_weights)
        self.augmentations, self.batch_size = augmentations, config.batch_size

    def __call__(self, batch: dict) -> dict:
        from ganaudit.search.copy_search import embed_variants
        from ganaudit.search.hygiene import rms_contrast

        starts, payloads = [], []
        for start, stop in zip(batch["start"], batch["stop"]):
            parts = []
            for s in range(int(start), int(stop), self.batch_size):
                indices = np.arange(s, min(s + self.batch_size, int(stop)))
                images = self.source.images(indices)
                names, variant_feats, features = embed_variants(images, self.augmentations, self.copy_embedder,
                                                                self.embedder)
                parts.append((indices, names, variant_feats, features, self.source.class_labels(indices),
                              rms_contrast(images)))
            starts.append(int(start))
            payloads.append(pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL))
        return {"start": np.array(starts, dtype=np.int64), "payload": np.array(payloads, dtype=object)}


class _NoBar:
    def update(self, n):
        pass


class ShardedIndex(SearchIndex):
    """Exact search over training features held in shards by Ray actors.

    Each actor holds some shards (rows ``[start, start + shard_rows)``) as exact FAISS indexes
    and returns its k best per query (``merge_block_results``); the driver merges the actors'
    answers in a ``faiss.ResultHeap``: the same k best rows as a ``FlatIndex`` over all rows.
    It is a ``SearchIndex`` (``kind`` flat), so exclusion and distances are handled as there.
    The actors start at the first search (after the sampling actors are done with the CPUs)
    and stop with :meth:`close`.
    """

    kind = "flat"
    cached = False

    def __init__(self, ray, database: np.ndarray, metric: str = "l2", workers: int = 1,
                 shard_rows: int | None = None):
        from ganaudit.embedders.cache import DEFAULT_CHUNK_SIZE

        database = as_features(database, "database")
        super().__init__(metric, database.shape[0], database.shape[1], None)
        self.ray, self._database, self._workers = ray, database, workers
        self.shard_rows = shard_rows or DEFAULT_CHUNK_SIZE
        self.n_shards = -(-database.shape[0] // self.shard_rows)
        self._actors = None

    def _start(self) -> list:
        ray = self.ray
        starts = list(range(0, self.ntotal, self.shard_rows))
        n_actors = max(1, min(self._workers, len(starts)))
        searcher = ray.remote(num_cpus=1)(_ShardSearcher)
        actors = []
        for a in range(n_actors):
            mine = starts[a::n_actors]
            refs = [ray.put(np.ascontiguousarray(self._database[s : s + self.shard_rows])) for s in mine]
            actors.append(searcher.remote(self.metric, mine, *refs))
        ray.get([actor.ready.remote() for actor in actors])
        return actors

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self._actors is None:
            self._actors = self._start()
        ref = self.ray.put(queries)
        answers = self.ray.get([actor.search.remote(ref, k) for actor in self._actors])
        heap = faiss.ResultHeap(queries.shape[0], k, keep_max=self.metric == "ip")
        for dist, idx in answers:
            heap.add_result(np.ascontiguousarray(dist, dtype=np.float32), np.ascontiguousarray(idx, dtype=np.int64))
        heap.finalize()
        return heap.D, heap.I

    def close(self) -> None:
        for actor in self._actors or []:
            self.ray.kill(actor)
        self._actors = None


class _ShardSearcher:
    """A Ray actor holding training shards as exact FAISS indexes."""

    def __init__(self, metric: str, starts: list[int], *shards: np.ndarray):
        import faiss

        from ganaudit.search.index import flat_blocks

        faiss.omp_set_num_threads(_assigned_cpus())
        self.metric = metric
        self.blocks = []
        for start, rows in zip(starts, shards):
            rows = np.asarray(rows)
            for _, index in flat_blocks(rows, metric, len(rows), None, None):
                self.blocks.append((start, index))

    def ready(self) -> int:
        return sum(index.ntotal for _, index in self.blocks)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from ganaudit.search.index import merge_block_results

        return merge_block_results(self.blocks, np.asarray(queries), k, keep_max=self.metric == "ip")
