"""Engines: where the heavy stages of an audit run (``--engine``).

An engine owns three stages of :func:`ganaudit.audit.audit`: embedding an image set into the
embedding cache, building the training index, and sampling + embedding + searching the images
under audit. Every other stage (calibration, metrics, gates, reports) runs in the calling
process whatever the engine, on the same arrays, so the engines give the same result:

- :class:`LocalEngine` (``local``, the default): this process, as the stages' own modules do it.
- :class:`ganaudit.engines.ray.RayEngine` (``ray``): Ray Data embeds the training set with
  actors (one GPU each where the cluster has GPUs) into the same cache, generated samples are
  drawn and embedded by seed ranges on the cluster, and the exact search runs per training
  shard on search actors, merged into the same matches (``docs/scale.md``).

Ray is imported only by :mod:`ganaudit.engines.ray`.
"""
from __future__ import annotations

from pathlib import Path


class LocalEngine:
    """Everything in this process (the stages' own functions)."""

    name = "local"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def embed_image_set(self, images, embedder, batch_size: int, cache_dir: Path | None, label: str,
                        progress: bool | None, *, name: str, weights=None):
        """``(N', D)`` features of ``images`` (see ``embedders.cache.embed_image_set``).

        ``name`` and ``weights`` say how to build ``embedder`` again elsewhere (unused here).
        """
        from ganaudit.embedders.cache import embed_image_set

        return embed_image_set(images, embedder, batch_size, cache_dir, label, progress)

    def build_index(self, database, metric: str, kind: str, approx_above: int, seed: int, gpu, cache_dir):
        from ganaudit.search.index import build_index

        return build_index(database, metric, kind, approx_above, seed, gpu=gpu, cache_dir=cache_dir)

    def search_generated(self, source, searcher, batch_size: int, label: str, progress: bool | None,
                         keep_copy_features: int, config=None):
        from ganaudit.search.copy_search import search_source

        return search_source(source, searcher, batch_size, label, progress, keep_copy_features=keep_copy_features)


def open_engine(config):
    """The engine ``config.engine`` names, ready to use as a context manager."""
    return open_engine_named(config.engine, config.ray_address, config.device)


def precompute_cache(images_path: Path, *, embedder: str = "pixels", copy_embedder: str = "auto", weights=None,
                     copy_weights=None, cache_dir: Path | None = None, device: str = "auto", batch_size: int = 128,
                     engine: str = "local", ray_address: str | None = None, skip_corrupt: bool = False,
                     progress: bool | None = None, shard_size: int | None = None) -> list[dict]:
    """``ganaudit embed``: fill the embedding cache of a training set, as ``check`` would read it.

    Embeds under ``embedder`` and under the copy embedder ``check`` would use with the same
    ``--embedder``/``--copy-embedder`` (when it is another one), so a later ``ganaudit check``
    with those settings and this cache folder finds every feature there.

    Returns:
        One dict per embedder: ``embedder``, ``n``, ``dim``, ``entry`` (the cache folder),
        ``shards``, ``cached`` (there before), ``embedded`` (by this run), ``duplicates``
        (shards that came back twice from the cluster and were written once), ``seconds``.
    """
    import time

    from ganaudit.config_checks import check_value
    from ganaudit.device import resolve_device
    from ganaudit.embedders import create_copy_embedder, create_embedder
    from ganaudit.embedders.cache import DEFAULT_CHUNK_SIZE, _Entry, cache_key, default_cache_dir, embed_image_set
    from ganaudit.errors import GanauditError
    from ganaudit.sources.datasets import open_image_set

    for name, value in (("embedder", embedder), ("copy_embedder", copy_embedder), ("device", device),
                        ("batch_size", batch_size), ("engine", engine), ("ray_address", ray_address),
                        ("weights", weights), ("copy_weights", copy_weights), ("cache_dir", cache_dir)):
        check_value(name, value, "--" + name.replace("_", "-"))
    if shard_size is not None and (not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1):
        raise GanauditError(f"--shard-size must be a positive integer, got {shard_size!r}")
    if ray_address is not None and engine != "ray":
        raise GanauditError("--ray-address needs --engine ray (the local engine runs in this process)")
    for flag, path in (("--weights", weights), ("--copy-weights", copy_weights)):
        if path is not None and not Path(path).exists():
            raise GanauditError(f"{flag} {path}: no such file or directory")
    images = open_image_set(images_path, "images", skip_corrupt=skip_corrupt)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    main = create_embedder(embedder, torch_device, weights)
    copy = create_copy_embedder(copy_embedder, main, torch_device, copy_weights)
    todo = [(embedder, main, weights)]
    if copy is not main:
        todo.append((copy_embedder if copy_embedder != "auto" else copy.spec.name, copy, copy_weights))
    out = []
    with (open_engine_named(engine, ray_address, device)) as runner:
        for name, model, model_weights in todo:
            started = time.perf_counter()
            label = f"embedding {images_path} ({name})"
            if runner.name == "ray":
                from ganaudit.engines.ray import embed_shards

                identity = model.identity() if not runner.gpus else runner._remote_identity(name, model_weights)
                from ganaudit.engines.ray import _StoredFeatures

                stats = embed_shards(runner, images, name, model_weights, _StoredFeatures(model.spec, identity, name),
                                     batch_size, cache_dir, label, progress, chunk_size=shard_size)
            else:
                key, material = cache_key(images, model)
                entry = _Entry(cache_dir / "features" / key, material, len(images), model.spec.dim,
                               shard_size or DEFAULT_CHUNK_SIZE)
                before, shards = len(entry.present_chunks()), len(entry.chunk_rows())
                embed_image_set(images, model, batch_size, cache_dir, label, progress,
                                chunk_size=shard_size or DEFAULT_CHUNK_SIZE)
                stats = {"entry": str(entry.path), "shards": shards, "cached": before, "embedded": shards - before,
                         "duplicates": 0}
            out.append({"embedder": name, "n": len(images), "dim": model.spec.dim, **stats,
                        "seconds": round(time.perf_counter() - started, 3)})
    return out


def open_engine_named(engine: str, ray_address: str | None = None, device: str = "auto"):
    if engine == "ray":
        from ganaudit.engines.ray import RayEngine

        return RayEngine(ray_address, device)
    return LocalEngine()
