"""Files that keep built search indexes between runs, content-addressed and checked.

An approximate index (IVF's k-means, HNSW's graph) takes minutes to build over a large
training set and is the same every time for the same features and settings, so
:func:`ganaudit.search.index.build_index` keeps it in a file named by :func:`key_of` (a hash of the
settings and of the features' bytes). The file is faiss's own format, written and read by
faiss without a second copy in memory; a small JSON record beside it holds the full key and
the file's SHA-256. Writes go to a temporary file moved into place, then the record; a run
killed in between leaves a record that does not match, and the index is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from ganaudit.plumbing import file_sha256, temporary_path, write_atomic

log = logging.getLogger(__name__)

FORMAT = 1
T = TypeVar("T")


def key_of(features: np.ndarray, settings: tuple) -> str:
    """SHA-256 of the cache format, ``settings`` (a tuple with a stable ``repr``) and the
    features' shape and bytes, hashed in place (about a second per GB, against minutes of
    k-means).

    Args:
        features: C-contiguous ``(N, D)`` float32 array.
        settings: everything else the index is a function of.
    """
    h = hashlib.sha256(repr((FORMAT, features.shape, str(features.dtype), settings)).encode())
    h.update(memoryview(features).cast("B"))
    return h.hexdigest()


def read(path: Path, key: str, load: Callable[[Path], T]) -> T | None:
    """``load(path)`` if ``path`` holds an intact index recorded under ``key``, else None.

    A missing file is a plain miss; a record for another key, a checksum mismatch, a file
    faiss cannot parse, or one replaced while being read is logged and is a miss too.
    """
    try:
        meta = json.loads(_record_path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("index cache %s could not be read (%s); rebuilding it", path, e)
        return None
    if not isinstance(meta, dict) or meta.get("key") != key:
        log.warning("index cache %s was recorded for other data or settings; rebuilding it", path)
        return None
    try:
        before = _file_state(path)
        index = load(path) if file_sha256(path) == meta.get("sha256") else None
        if index is not None and _file_state(path) != before:  # replaced while being read
            index = None
    except (OSError, RuntimeError) as e:  # faiss raises RuntimeError on a file it cannot parse
        log.warning("index cache %s could not be read (%s); rebuilding it", path, e)
        return None
    if index is None:
        log.warning("index cache %s is corrupt; rebuilding it", path)
    return index


def write(path: Path, key: str, save: Callable[[Path], None], what: str) -> None:
    """``save`` the index to a temporary file, move it to ``path``, then write its record.

    A cache that cannot be written (disk full, read-only) costs the next run a rebuild, not
    this run its result: it is logged and the caller goes on.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary_path(path) as tmp:
            save(tmp)
            digest = file_sha256(tmp)
        write_atomic(_record_path(path), json.dumps({"key": key, "sha256": digest}))
    except (OSError, RuntimeError) as e:
        log.warning("could not cache the %s in %s (%s); the next audit will build it again", what, path, e)
        return
    log.info("cached the %s in %s", what, path)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _file_state(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns
