"""The embedding cache: features of training and holdout sets, stored on disk.

An entry is keyed by a SHA-256 of everything that determines its features: the image set's
content fingerprint (every file's bytes), the embedder's name, its spec (input size, resize,
mean/std, dim, normalisation), its weight file's SHA-256 and its compute precision (bf16 on
a GPU gives other features than float32 on a CPU). Any change gives another entry; nothing is
ever invalidated in place. Layout::

    <cache_dir>/features/<key>/entry.json          what the key was made of, chunk size, N, D
    <cache_dir>/features/<key>/chunk-000000.bin    rows [0, chunk_size), and so on, while it fills
    <cache_dir>/features/<key>/features.npy        the whole matrix, once complete
    <cache_dir>/features/<key>/features.json       its rows, D, SHA-256 and the rows not embedded

Each chunk file is ``MAGIC | SHA-256 of the payload | payload`` where the payload holds the
chunk's features ``(rows, D)`` float32 and a ``(rows,)`` bool mask of the rows that were
embedded (unreadable images skipped with ``--skip-corrupt`` are not). Every file is written
to a temporary file and moved into place with ``os.replace``, so an interrupted run leaves
only complete chunks and resumes after the last of them. A chunk whose checksum, size or
shape is wrong is logged, deleted and embedded again.

Once every chunk is there, they are joined into ``features.npy`` (the embedded rows only, a
plain ``.npy``), written the same way, one chunk at a time, each chunk file deleted once it
has been copied, so the entry never takes much more disk than the matrix itself; then its
record ``features.json``. A hit checks the record and the file's SHA-256 (read in blocks) and
returns the matrix memory-mapped, read-only (``np.load(mmap_mode="r")``): training features
are never read into memory as a whole, and the consumers that stream over them release the
pages they have read (``ganaudit.features.release_pages``). A matrix whose record, size or
checksum does not match is logged, deleted and embedded again. A run killed while joining
leaves the chunks not yet copied; the next run embeds the deleted ones again.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ganaudit.embedders.base import Embedder
from ganaudit.plumbing import STALE_GLOB, file_sha256, write_atomic, write_atomic_parts
from ganaudit.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_CHUNK_SIZE = 4096
MATRIX_FILE, MATRIX_RECORD = "features.npy", "features.json"
_MAGIC = b"GAFEAT1\n"
_STALE_TMP_SECONDS = 3600


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ganaudit``, else ``~/.cache/ganaudit``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "ganaudit"


def usable_cache_dir(path: Path) -> Path | None:
    """``path`` if the cache can live there (created if missing, a file can be written), else None.

    A cache folder that cannot be used costs the run its cache, not its result: one warning,
    and the audit embeds without caching.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ganaudit-probe-"):
            pass
    except OSError as e:
        log.warning("the embedding cache folder %s cannot be used (%s); embedding without a cache "
                    "(choose another --cache-dir, or pass --no-cache to silence this)", path, e.strerror or e)
        return None
    return path


def cache_key(images, embedder: Embedder) -> tuple[str, dict]:
    """``(key, material)``: the entry's name and the facts it is a hash of."""
    material = {"format": CACHE_FORMAT, "n_images": len(images), "fingerprint": images.fingerprint(),
                "embedder": embedder.identity()}
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest(), material


def embed_image_set(
    images,
    embedder: Embedder,
    batch_size: int,
    cache_dir: Path | None,
    progress_label: str,
    progress: bool | None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    embed_batch: Callable[[torch.Tensor], np.ndarray] | None = None,
) -> np.ndarray:
    """Embed every image of an ImageSet, reusing and filling the on-disk cache.

    Args:
        images: an ``ImageSet`` (``len``, ``batches(batch_size, indices)``, ``fingerprint()``).
        embedder: what turns image batches into features.
        batch_size: images per embedder call.
        cache_dir: the cache's root folder; None embeds without caching.
        progress_label, progress: the progress bar's label, and whether to show it
            (None: only on a terminal).
        chunk_size: rows per chunk file, the unit of resumption. An existing entry keeps the
            chunk size it was started with.
        embed_batch: what embeds one batch (default ``embedder.embed``), e.g. the embedder
            wrapped in an out-of-memory splitter.

    Returns:
        ``(N', D)`` float32 features in image order, N' = N less the unreadable images skipped
        (with ``skip_corrupt``). As after a full pass of ``images.batches``, those are then
        recorded in ``images.skipped`` and dropped from the set, on a cache hit too, so row
        ``i`` is image ``i`` of the set.
    """
    n, dim = len(images), embedder.spec.dim
    embed = embed_batch or embedder.embed
    with progress_bar(n, progress_label, progress) as bar:
        if cache_dir is None:
            feats, filled = _embed_rows(images, embed, dim, np.arange(n), batch_size, bar)
            _forget_unreadable(images, filled)
            return feats[filled]
        key, material = cache_key(images, embedder)
        entry = _Entry(Path(cache_dir) / "features" / key, material, n, dim, chunk_size)
        hit = entry.read_matrix()
        if hit is not None:
            feats, filled = hit
            bar.update(n)
            log.info("%s: read from the cache (%s)", progress_label, entry.path)
        else:
            masks, n_cached, n_built = [], 0, 0
            for i, rows in enumerate(entry.chunk_rows()):
                chunk = entry.read_chunk(i, len(rows))
                if chunk is None:
                    chunk = _embed_rows(images, embed, dim, rows, batch_size, bar)
                    entry.write_chunk(i, *chunk)
                    n_built += 1
                else:
                    bar.update(len(rows))
                    n_cached += 1
                masks.append(chunk[1])
            log.info("%s: %d chunks from the cache, %d embedded (%s)", progress_label, n_cached, n_built, entry.path)
            filled = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
            feats = entry.join_chunks(images, embed, batch_size, filled)
    _forget_unreadable(images, filled)
    return feats


def _embed_rows(images, embed, dim: int, rows: np.ndarray, batch_size: int, bar) -> tuple[np.ndarray, np.ndarray]:
    """Embed images ``rows``: ``(features (len(rows), D), embedded mask (len(rows),))``."""
    feats = np.zeros((len(rows), dim), dtype=np.float32)
    filled = np.zeros(len(rows), dtype=bool)
    position = {int(r): p for p, r in enumerate(rows)}
    # One yield per requested batch; unreadable images are missing from its indices.
    for k, (indices, batch) in enumerate(images.batches(batch_size, rows)):
        where = np.array([position[int(j)] for j in indices], dtype=np.int64)
        if len(where):
            feats[where] = embed(batch)
            filled[where] = True
        bar.update(min(batch_size, len(rows) - k * batch_size))
    return feats, filled


def _forget_unreadable(images, filled: np.ndarray) -> None:
    """Record the images that were not embedded as skipped and drop them from the set.

    What ``ImageSet.batches`` does at the end of a full pass; needed here because the cache
    embeds chunk by chunk (or not at all, on a hit).
    """
    missing = np.flatnonzero(~filled)
    if not len(missing) or getattr(images, "paths", None) is None:
        return
    for i in missing:
        if images.paths[i] not in images.skipped:
            images.skipped.append(images.paths[i])
            log.warning("skipped unreadable image %s (as recorded in the embedding cache)", images.paths[i])
    images._drop([int(i) for i in missing])


class _Entry:
    """One cache entry: a folder of chunk files and the manifest that describes them."""

    def __init__(self, path: Path, material: dict, n: int, dim: int, chunk_size: int):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.path, self.n, self.dim = path, n, dim
        path.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        manifest = self._read_manifest()
        material = json.loads(json.dumps(material))  # as it reads back from JSON: tuples become lists
        if manifest is not None and manifest.get("material") == material and manifest.get("dim") == dim:
            self.chunk_size = int(manifest["chunk_size"])
            return
        if manifest is not None:
            log.warning("embedding cache %s: manifest does not match its key; rebuilding the entry", path)
        for old in [*path.glob("chunk-*.bin"), path / MATRIX_RECORD, path / MATRIX_FILE]:
            old.unlink(missing_ok=True)
        self.chunk_size = chunk_size
        write_atomic(path / "entry.json", json.dumps(
            {"material": material, "n": n, "dim": dim, "chunk_size": chunk_size, "created": time.time()},
            indent=1, sort_keys=True).encode())

    def _read_manifest(self) -> dict | None:
        try:
            manifest = json.loads((self.path / "entry.json").read_text())
            int(manifest["chunk_size"])
            return manifest
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("embedding cache %s: unreadable manifest; rebuilding the entry", self.path)
            return {}

    def present_chunks(self) -> set[int]:
        """The chunks this entry holds: every one once they are joined into the matrix (its
        record written last), else those whose chunk file is there."""
        n_chunks = len(self.chunk_rows())
        if (self.path / MATRIX_RECORD).exists() and (self.path / MATRIX_FILE).exists():
            return set(range(n_chunks))
        return {i for i in range(n_chunks) if self.chunk_path(i).exists() and self.chunk_path(i).stat().st_size > 0}

    def chunk_rows(self) -> list[np.ndarray]:
        return [np.arange(s, min(s + self.chunk_size, self.n)) for s in range(0, self.n, self.chunk_size)]

    def chunk_path(self, i: int) -> Path:
        return self.path / f"chunk-{i:06d}.bin"

    def read_chunk(self, i: int, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The chunk's ``(features, mask)``, or None when absent or corrupt (then deleted)."""
        path = self.chunk_path(i)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _decode_chunk(data, rows, self.dim)
        except (ValueError, EOFError, OSError) as e:
            log.warning("embedding cache: %s is corrupt (%s); embedding its %d images again", path, e, rows)
            path.unlink(missing_ok=True)
            return None

    def write_chunk(self, i: int, feats: np.ndarray, filled: np.ndarray) -> None:
        write_atomic(self.chunk_path(i), _encode_chunk(feats, filled))

    def read_matrix(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(features memory-mapped read-only, embedded mask (N,))`` of a complete entry, or
        None when it has none yet (or it was corrupt: then it is deleted)."""
        matrix, record_path = self.path / MATRIX_FILE, self.path / MATRIX_RECORD
        try:
            record = json.loads(record_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            record = None
        problem = None
        try:
            if not isinstance(record, dict):
                problem = "unreadable record"
            else:
                missing = np.asarray(record["missing"], dtype=np.int64)
                rows = int(record["rows"])
                if rows + len(missing) != self.n or int(record["dim"]) != self.dim:
                    problem = f"record for {rows} + {len(missing)} rows of D={record['dim']}"
                elif file_sha256(matrix) != record["sha256"]:
                    problem = "checksum mismatch"
                else:
                    feats = np.load(matrix, mmap_mode="r", allow_pickle=False)
                    if feats.shape != (rows, self.dim) or feats.dtype != np.float32:
                        problem = f"holds {feats.shape} {feats.dtype}"
        except FileNotFoundError:
            problem = "record without its matrix"
        except (OSError, ValueError, KeyError, TypeError) as e:
            problem = str(e)
        if problem is not None:
            log.warning("embedding cache: %s is corrupt (%s); embedding its %d images again", matrix, problem, self.n)
            record_path.unlink(missing_ok=True)
            matrix.unlink(missing_ok=True)
            return None
        filled = np.ones(self.n, dtype=bool)
        filled[missing] = False
        return feats, filled

    def join_chunks(self, images, embed, batch_size: int, filled: np.ndarray) -> np.ndarray:
        """Write the complete chunks as one ``features.npy`` (embedded rows only) and its record,
        deleting each chunk once copied; return the matrix memory-mapped.

        A chunk that went missing meanwhile (another audit sharing the cache joined it first)
        is embedded again: the same features.
        """
        rows = int(filled.sum())
        if rows == 0:  # nothing was embedded: nothing to map (the chunks stay, and say so)
            return np.zeros((0, self.dim), dtype=np.float32)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                      "fortran_order": False, "shape": (rows, self.dim)})

        def parts():
            yield header.getvalue()
            for i, chunk_rows in enumerate(self.chunk_rows()):
                chunk = self.read_chunk(i, len(chunk_rows))
                if chunk is None:
                    chunk = _embed_rows(images, embed, self.dim, chunk_rows, batch_size, _NoBar())
                feats, mask = chunk
                yield np.ascontiguousarray(feats[mask & filled[chunk_rows]], dtype="<f4").tobytes()
                # Written by now (the writer asked for the next part): a run killed from here on
                # embeds this chunk again.
                self.chunk_path(i).unlink(missing_ok=True)

        digest = write_atomic_parts(self.path / MATRIX_FILE, parts())
        write_atomic(self.path / MATRIX_RECORD, json.dumps(
            {"rows": rows, "dim": self.dim, "sha256": digest, "missing": np.flatnonzero(~filled).tolist()}))
        feats = np.load(self.path / MATRIX_FILE, mmap_mode="r", allow_pickle=False)
        if feats.shape != (rows, self.dim):
            raise RuntimeError(f"embedding cache {self.path}: joined {feats.shape} features, expected {rows} rows")
        return feats


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _encode_chunk(feats: np.ndarray, filled: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(feats, dtype=np.float32), allow_pickle=False)
    np.save(buffer, np.ascontiguousarray(filled, dtype=bool), allow_pickle=False)
    payload = buffer.getvalue()
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def _decode_chunk(data: bytes, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and verify a chunk file's bytes; ValueError says what is wrong."""
    head = len(_MAGIC) + 32
    if len(data) < head or not data.startswith(_MAGIC):
        raise ValueError("bad header")
    payload = data[head:]
    if hashlib.sha256(payload).digest() != data[len(_MAGIC):head]:
        raise ValueError("checksum mismatch")
    buffer = io.BytesIO(payload)
    feats = np.load(buffer, allow_pickle=False)
    filled = np.load(buffer, allow_pickle=False)
    if feats.shape != (rows, dim) or feats.dtype != np.float32 or filled.shape != (rows,) or filled.dtype != bool:
        raise ValueError(f"holds {feats.shape} {feats.dtype} features, expected ({rows}, {dim}) float32")
    return feats, filled


def _remove_stale_temporaries(folder: Path) -> None:
    # Left by a run killed mid-write; a live writer's temporaries are younger than this.
    cutoff = time.time() - _STALE_TMP_SECONDS
    for tmp in folder.glob(STALE_GLOB):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass
