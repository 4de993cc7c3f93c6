"""Image sets packed in container files: WebDataset ``.tar`` shards and Parquet with image bytes.

Both are :class:`~ganaudit.sources.datasets.ImageSet` s whose images are encoded files (PNG,
JPEG, ...) inside a bigger file, decoded exactly as images in a folder are (same RGB
conversion, same resize to the first image's size), so a set gives the same features as the
same images unpacked into a folder. ``paths`` name each image inside its container
(``shard-000.tar/000123.jpg``, ``part-0.parquet[17]``); ``describe`` reports those names.

- **WebDataset**: a ``.tar`` file, or a folder holding ``.tar`` files (sorted by name; a
  folder with images of its own is an image folder instead). Every member with an image
  extension is an image, in archive order. When every image has a ``.cls`` member of the same
  key (``000123.cls`` holding an integer), those are the labels.
- **Parquet**: a ``.parquet`` file, or a folder of them (sorted). The image column is
  ``image`` (binary, or a struct with a ``bytes`` field, as Hugging Face ``datasets`` writes
  it), else the first binary column; an integer ``label`` column, when present, gives labels.
  Row groups are read as needed, one at a time per decode.

Member offsets are read once when the set is opened; a worker (``--engine ray``) opens the
set again from its location and gets the same order.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ganaudit.errors import GanauditError
from ganaudit.sources.datasets import IMAGE_EXTENSIONS, ImageSet, _capped, _to_rgb


@dataclass
class ContainerImageSet(ImageSet):
    """An ImageSet whose images are members of ``.tar`` or ``.parquet`` files (module docstring)."""

    _reader: object = field(default=None, repr=False)

    def load(self, index: int) -> torch.Tensor:
        return decode_bytes(self._reader.read(self.paths[index]), self.paths[index], self.size)

    def _decode_or_none(self, rel_path: str) -> torch.Tensor | None:
        try:
            return decode_bytes(self._reader.read(rel_path), rel_path, self.size)
        except GanauditError:
            if not self.skip_corrupt:
                raise
            return None

    def member_sha256(self, index: int) -> str:
        """SHA-256 of image ``index``'s encoded bytes (as a folder's file hash is of its bytes)."""
        return hashlib.sha256(self._reader.read(self.paths[index])).hexdigest()

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self._reader.kind.encode() + b"\0")
        for rel in self._all_paths:
            h.update(rel.encode() + b"\0")
            h.update(self._reader.read(rel))
        return h.hexdigest()


def decode_bytes(data: bytes, name: str, size: tuple[int, int] | None) -> torch.Tensor:
    """An encoded image's bytes as ``(3, H, W)`` float32 in [0, 1], converted as a file is."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(_to_rgb(im, size), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise GanauditError(f"cannot read image {name}: {e}; remove or replace it, or pass --skip-corrupt") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class _TarReader:
    kind = "webdataset"

    def __init__(self, root: Path, shards: list[Path], what: str):
        self.root = root
        self.where: dict[str, tuple[Path, int, int]] = {}
        self.order: list[str] = []
        classes: dict[str, int] = {}
        for shard in shards:
            try:
                with tarfile.open(shard) as tar:
                    members = [m for m in tar.getmembers() if m.isfile()]
                    for m in members:
                        key, _, ext = m.name.rpartition(".")
                        ext = "." + ext.lower()
                        rel = f"{shard.name}/{m.name}"
                        if ext in IMAGE_EXTENSIONS and not any(p.startswith(".") for p in m.name.split("/")):
                            self.where[rel] = (shard, m.offset_data, m.size)
                            self.order.append(rel)
                        elif ext == ".cls":
                            text = tar.extractfile(m).read().decode(errors="replace").strip()
                            if text.lstrip("-").isdigit():
                                classes[f"{shard.name}/{key}"] = int(text)
            except (tarfile.TarError, OSError) as e:
                raise GanauditError(f"{what} {shard}: not a readable tar file ({e})") from None
        keys = [rel.rpartition(".")[0] for rel in self.order]
        self.labels = (np.array([classes[k] for k in keys], dtype=np.int64)
                       if self.order and all(k in classes for k in keys) else None)

    def read(self, rel: str) -> bytes:
        shard, offset, size = self.where[rel]
        with open(shard, "rb") as f:
            f.seek(offset)
            return f.read(size)


class _ParquetReader:
    kind = "parquet"

    def __init__(self, root: Path, files: list[Path], what: str):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise GanauditError(f"{what} {root}: reading Parquet needs pyarrow: pip install pyarrow "
                                "(it comes with 'ganaudit[ray]')") from None
        self.files = {}
        self.order: list[str] = []
        labels = []
        for path in files:
            try:
                meta = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises its own ArrowInvalid
                raise GanauditError(f"{what} {path}: not a readable Parquet file ({e})") from None
            column = _image_column(meta.schema_arrow, path, what)
            starts = np.cumsum([0] + [meta.metadata.row_group(g).num_rows for g in range(meta.num_row_groups)])
            self.files[path.name] = (path, column, starts)
            self.order.extend(f"{path.name}[{i}]" for i in range(int(starts[-1])))
            if "label" in meta.schema_arrow.names:
                labels.append(meta.read(columns=["label"]).column("label").to_numpy(zero_copy_only=False))
            else:
                labels.append(None)
        self.labels = (np.concatenate(labels).astype(np.int64)
                       if labels and all(lab is not None for lab in labels) else None)
        self._cache: tuple | None = None

    def read(self, rel: str) -> bytes:
        import pyarrow.parquet as pq

        name, _, row = rel.rpartition("[")
        row = int(row.rstrip("]"))
        path, column, starts = self.files[name]
        group = int(np.searchsorted(starts, row, side="right") - 1)
        cached = self._cache
        if cached is None or cached[0] != (name, group):
            table = pq.ParquetFile(path).read_row_group(group, columns=[column])
            cached = self._cache = ((name, group), table.column(column).to_pylist())
        value = cached[1][row - int(starts[group])]
        return value["bytes"] if isinstance(value, dict) else value


def _image_column(schema, path: Path, what: str) -> str:
    import pyarrow as pa

    def is_image(t) -> bool:
        return (pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or (pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))))

    if "image" in schema.names and is_image(schema.field("image").type):
        return "image"
    for f in schema:
        if is_image(f.type):
            return f.name
    raise GanauditError(f"{what} {path}: no column of image bytes (looked for 'image', then any binary column)")


def is_container(location: Path) -> bool:
    """Whether ``location`` is a ``.tar``/``.parquet`` file, or a folder of them without images."""
    if location.is_file():
        return location.suffix.lower() in (".tar", ".parquet")
    if not location.is_dir():
        return False
    children = [p for p in location.iterdir() if not p.name.startswith(".")]
    if any(p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS for p in children):
        return False  # an image folder (a stray archive in it is not the set)
    return bool(_members(location, ".tar") or _members(location, ".parquet"))


def _members(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix
                  and not p.name.startswith("."))


def open_container(location: Path, what: str, skip_corrupt: bool) -> ContainerImageSet:
    """Open a WebDataset or Parquet image set (module docstring)."""
    if location.is_file():
        files = [location]
    else:
        files = _members(location, ".tar") or _members(location, ".parquet")
    kind = files[0].suffix.lower()
    reader = _TarReader(location, files, what) if kind == ".tar" else _ParquetReader(location, files, what)
    if not reader.order:
        raise GanauditError(f"{what} {location}: no images found in its {kind} files")
    size = None
    for rel in reader.order:
        try:
            first = decode_bytes(reader.read(rel), rel, None)
        except GanauditError:
            if not skip_corrupt:
                raise
            continue
        size = _capped((int(first.shape[1]), int(first.shape[2])))
        break
    if size is None:
        raise GanauditError(f"{location}: none of its {len(reader.order)} images could be read")
    labels = reader.labels
    class_names = [str(c) for c in range(int(labels.max()) + 1)] if labels is not None and len(labels) else []
    if labels is not None and (labels.min() < 0 or len(class_names) < 2):
        labels, class_names = None, []
    return ContainerImageSet(location, list(reader.order), labels, class_names, size, skip_corrupt=skip_corrupt,
                             _reader=reader)
