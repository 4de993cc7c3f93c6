"""The content hash of a training image: the key a waiver is written against.

- Image folders: the SHA-256 of the file's bytes, as ``sha256sum FILE`` prints it. Renaming
  or moving a file keeps its waivers; re-encoding it (another PNG compressor, a JPEG save)
  does not, because the bytes change.
- ``.npy``/``.npz`` arrays: the SHA-256 of the row's values, C order, little-endian bytes of
  the array's dtype: ``hashlib.sha256(np.ascontiguousarray(a[i]).astype(a.dtype.newbyteorder("<")).tobytes())``
  for ``a = np.load(f)`` (``np.load(f)["images"]`` for an ``.npz``). The row, not the file,
  so re-ordering or appending rows keeps the waivers of the rows that stay.

Byte-identical training images have the same hash, so one waiver covers every copy.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ganaudit.plumbing import file_sha256


def row_sha256(row: np.ndarray) -> str:
    """Hex SHA-256 of one array row: its values in C order as little-endian bytes of its dtype."""
    little = np.ascontiguousarray(row).astype(row.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(little.tobytes()).hexdigest()


def train_image_hashes(images, indices) -> dict[int, str]:
    """Content hashes of some images of an ImageSet (see the module docstring).

    Args:
        images: a ``ganaudit.sources.datasets.ImageSet`` (a folder or an array file).
        indices: image indices, as the audit numbers them (``ImageSet.describe(i)``).

    Returns:
        ``{index: 64 lowercase hex digits}``.
    """
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return {}
    if hasattr(images, "member_sha256"):  # WebDataset / Parquet: the member's encoded bytes
        return {i: images.member_sha256(i) for i in wanted}
    if images.paths is not None:
        return {i: file_sha256(Path(images.location) / images.paths[i]) for i in wanted}
    from ganaudit.sources.arrays import open_array_file

    array, _ = open_array_file(Path(images.location), "--train")
    rows = array.rows(np.asarray(wanted, dtype=np.int64))
    return {i: row_sha256(row) for i, row in zip(wanted, rows)}


def train_image_sha256(images, index: int) -> str:
    """The content hash of image ``index`` of ``images`` (see the module docstring)."""
    return train_image_hashes(images, [index])[int(index)]
