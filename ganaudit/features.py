"""Feature arrays: the one check every metric and every index applies to its inputs.

A feature array is ``(N, D)`` real numbers (float, or integers that are converted), with
``D >= 1``, at least the rows the caller needs, and no NaN or infinity. It is returned as
C-contiguous float32, the form FAISS and the metrics compute on (no copy when it already is).
"""
from __future__ import annotations

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
    for start in range(0, x.shape[0], _FINITE_BLOCK_ROWS):
        if not np.isfinite(x[start : start + _FINITE_BLOCK_ROWS]).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    return x


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
