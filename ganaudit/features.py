"""Feature arrays: the one check every metric and every index applies to its inputs.

A feature array is ``(N, D)`` real numbers (float, or integers that are converted), with
``D >= 1``, at least the rows the caller needs, and no NaN or infinity. It is returned as
C-contiguous float32, the form FAISS and the metrics compute on (no copy when it already is).

Training features may be memory-mapped from the embedding cache (``np.memmap``, read-only).
Whoever streams over such an array in blocks calls :func:`release_pages` after each block,
so the pages it has read leave this process's resident set (they stay in the page cache
and are read again from there on the next touch): a pass over a memory-mapped matrix then
holds about one block resident, not the whole file.
"""
from __future__ import annotations

import mmap

import numpy as np

_FINITE_BLOCK_ROWS = 65_536  # the finiteness check never allocates more than this many rows of bools


def as_features(x, name: str, min_rows: int = 1) -> np.ndarray:
    """Check ``x`` and return it as C-contiguous float32 ``(N, D)``.

    Args:
        x: array-like ``(N, D)``.
        name: the argument's name, for messages.
        min_rows: the fewest rows the caller can work with.

    Raises:
        ValueError: wrong rank or dtype, too few rows, no columns, NaN or infinite values.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has no feature columns (shape {x.shape})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = block_rows(x.shape[1], _FINITE_BLOCK_ROWS)
    for start in range(0, x.shape[0], rows):
        if not np.isfinite(x[start : start + rows]).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        release_pages(x)
    return x


RESIDENT_BLOCK_BYTES = 64 << 20  # what one block of a streamed pass over a memory map holds at most


def block_rows(dim: int, most: int) -> int:
    """Rows per block of a pass over ``(N, dim)`` float32 rows: at most ``most``, and at most
    ``RESIDENT_BLOCK_BYTES`` of them (at least one)."""
    return max(1, min(int(most), RESIDENT_BLOCK_BYTES // (4 * max(int(dim), 1))))


def take_rows(x: np.ndarray, rows) -> np.ndarray:
    """``x[rows]`` as a new in-memory array; for a memory map, gathered one file span of at most
    ``RESIDENT_BLOCK_BYTES`` at a time with the pages released after each (the kernel's
    readahead maps whole neighbourhoods of each row read, so an unbounded gather of scattered
    rows would leave most of the file resident)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if not is_mapped(x) or len(rows) == 0:
        return np.array(x[rows])
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    out = np.empty((len(rows), *x.shape[1:]), dtype=x.dtype)
    span = block_rows(int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize // 4, 1 << 62)
    start = 0
    while start < len(wanted):
        stop = int(np.searchsorted(wanted, wanted[start] + span, side="left"))
        out[order[start:stop]] = x[wanted[start:stop]]
        release_pages(x)
        start = stop
    return out


def mapping_of(x) -> mmap.mmap | None:
    """The ``mmap`` an array (or a view of one, however deep) reads from, or None."""
    for _ in range(64):  # a chain of views is short; bounded all the same
        if x is None:
            return None
        if isinstance(x, mmap.mmap):
            return x
        found = getattr(x, "_mmap", None)
        if isinstance(found, mmap.mmap):
            return found
        x = getattr(x, "base", None)
    return None


def is_mapped(x) -> bool:
    """True when ``x`` reads from a memory-mapped file."""
    return mapping_of(x) is not None


def release_pages(x) -> None:
    """Drop the pages of ``x``'s read-only file mapping from this process's resident set.

    A no-op for arrays in memory. Only for read-only mappings (``np.load(mmap_mode="r")``):
    their pages are clean, so the kernel reads them again (from the page cache) when touched.
    """
    mapping = mapping_of(x)
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED") or getattr(x, "flags", None) is None:
        return
    if x.flags.writeable:  # a writable mapping may hold unwritten changes: leave it alone
        return
    try:
        mapping.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed mapping, or a platform without madvise
        pass


def check_same_dim(**arrays: np.ndarray) -> None:
    """Raise ValueError unless every ``(N, D)`` array has the same D; names come from the keywords."""
    dims = {name: a.shape[1] for name, a in arrays.items()}
    if len(set(dims.values())) > 1:
        listed = ", ".join(f"{name} has D={d}" for name, d in dims.items())
        raise ValueError(f"dimension mismatch: {listed}")


def check_count(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int when it is an integer (not a bool) of at least ``minimum``, else ValueError."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
