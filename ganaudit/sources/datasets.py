"""Image sets on disk, streamed in batches: folders of images and .npz/.npy arrays.

Every image becomes an RGB float32 tensor in [0, 1] with shape ``(3, H, W)``:

- Grayscale and palette images are converted to RGB; RGBA (and palette transparency) loses
  its alpha channel, which is dropped, not composited; 16-bit grayscale PNGs are scaled
  from 0..65535.
- Mixed sizes: every image is resized to the size of the first image (in sorted path
  order) with PIL's antialiased bicubic filter (``Image.resize(..., BICUBIC)``), whatever the
  embedder; the embedder then resizes to its own input size on the device, also bicubic and
  antialiased. Aspect ratios are not kept: nothing is cropped.
- Large images: when the first image's long side exceeds ``MAX_SIDE`` (1024 px), the set is
  delivered at that size scaled down to a long side of 1024 (aspect kept), so a batch of
  photographs never needs gigabytes. Every embedder's input is smaller than that.

Folders are searched recursively for .png, .jpg, .jpeg, .webp and .bmp files (any case);
hidden files and folders (names starting with ``.``, such as macOS ``._*`` files) are left
out. Folders follow the torchvision ImageFolder layout when every image sits under a
first-level subfolder and there are at least two: the subfolder names, sorted, are the
classes. Otherwise the set is flat and unlabelled. Arrays are described in ``arrays.py``.

Memory: decoding runs in a thread pool one batch ahead of the consumer, and arrays are read a
batch of rows at a time, so memory holds about two batches whatever the size of the set.

Unreadable images stop the run with an error naming the file, or with ``skip_corrupt`` are
skipped and counted (``n_corrupt``). A skipped image is left out of the indices a batch
yields, and once a pass over the whole set ends, it is removed from ``paths`` and ``labels``:
from then on index ``i`` (``describe``, ``load``, ``labels``) is the ``i``-th readable image,
which is row ``i`` of a consumer that filled rows by the yielded indices and kept the filled
ones in order.
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ganaudit.errors import GanauditError
from ganaudit.plumbing import hash_file_into
from ganaudit.sources.arrays import (
    ArrayFile, array_to_tensor, array_value_range, image_size, layout_of, open_array_file,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_SIDE = 1024  # long side images are delivered at, at most
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass
class ImageSet:
    """A finite, indexable set of images with optional labels.

    Attributes:
        location: the folder or file it was read from.
        paths: per-image file path relative to ``location`` (folders), or ``None`` (arrays).
        labels: ``(N,)`` int64 class index per image, or ``None``.
        class_names: names of the classes, indexed by label.
        size: ``(H, W)`` every image is delivered at.
        skip_corrupt: skip unreadable images instead of failing.
        skipped: relative paths of the images skipped so far, in the order met.
    """

    location: Path
    paths: list[str] | None
    labels: np.ndarray | None
    class_names: list[str]
    size: tuple[int, int]
    _array: ArrayFile | None = field(default=None, repr=False)
    _array_range: tuple[float, float] = (0.0, 1.0)
    skip_corrupt: bool = False
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._all_paths = tuple(self.paths) if self.paths is not None else None  # the set as given, for fingerprint()

    @property
    def n_corrupt(self) -> int:
        """How many unreadable images were skipped."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self._array)

    def describe(self, index: int) -> dict:
        """``{"path": ...}``: image ``index``'s path relative to ``location``, or ``file[index]``."""
        if self.paths is not None:
            return {"path": self.paths[index]}
        return {"path": f"{self.location.name}[{index}]"}

    def class_labels(self, indices: np.ndarray) -> np.ndarray | None:
        """``(B,)`` int64 class of images ``indices`` (class subfolders or array labels), or None."""
        return None if self.labels is None else self.labels[np.asarray(indices)]

    def subset(self, indices: np.ndarray) -> "ImageSubset":
        """Images ``indices`` of this set, in that order, as a source indexed ``0..len(indices)-1``."""
        return ImageSubset(self, np.asarray(indices, dtype=np.int64))

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as a ``(3, H, W)`` float32 tensor in [0, 1]."""
        if self._array is not None:
            return self._array_batch(np.array([index]))[0]
        return _decode(self.location / self.paths[index], self.size)

    def batches(
        self, batch_size: int, indices: np.ndarray | None = None, workers: int = 4
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(indices, images)`` with images ``(B, 3, H, W)`` float32 in [0, 1].

        Args:
            batch_size: images per batch.
            indices: which images, in order (default: all, which also drops skipped images
                from the set when the pass ends; see the module docstring).
            workers: decoding threads; the next batch decodes while the caller works.
        """
        full_pass = indices is None
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        if self._array is not None:
            with ThreadPoolExecutor(max_workers=1) as pool:  # read the next rows while the caller works
                pending = None
                for chunk in chunks:
                    future = pool.submit(self._array_batch, chunk)
                    if pending is not None:
                        yield pending[0], pending[1].result()
                    pending = (chunk, future)
                if pending is not None:
                    yield pending[0], pending[1].result()
            return
        unreadable: list[int] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = None
            for chunk in chunks:
                futures = [pool.submit(self._decode_or_none, self.paths[i]) for i in chunk]
                if pending is not None:
                    yield self._collect(*pending, unreadable)
                pending = (chunk, futures)
            if pending is not None:
                yield self._collect(*pending, unreadable)
        if full_pass and unreadable:
            self._drop(unreadable)

    def _array_batch(self, chunk: np.ndarray) -> torch.Tensor:
        return array_to_tensor(self._array.rows(chunk), self._array_range, layout_of(self._array.shape))

    def _decode_or_none(self, rel_path: str) -> torch.Tensor | None:
        try:
            return _decode(self.location / rel_path, self.size)
        except GanauditError:
            if not self.skip_corrupt:
                raise
            return None

    def _collect(self, chunk: np.ndarray, futures, unreadable: list[int]) -> tuple[np.ndarray, torch.Tensor]:
        images = [f.result() for f in futures]
        keep = np.array([im is not None for im in images], dtype=bool)
        for i in chunk[~keep]:
            unreadable.append(int(i))
            if self.paths[i] not in self.skipped:
                self.skipped.append(self.paths[i])
                log.warning("skipped unreadable image %s", self.location / self.paths[i])
        if not keep.any():
            return chunk[:0], torch.empty(0, 3, *self.size)
        return chunk[keep], torch.stack([im for im in images if im is not None])

    def _drop(self, unreadable: list[int]) -> None:
        keep = np.ones(len(self.paths), dtype=bool)
        keep[unreadable] = False
        if not keep.any():
            raise GanauditError(f"{self.location}: none of its {len(self.paths)} images could be read")
        self.paths = [p for p, k in zip(self.paths, keep) if k]
        if self.labels is not None:
            self.labels = self.labels[keep]

    def fingerprint(self) -> str:
        """A content hash of the set as given: every file's name and bytes, or the array file's bytes.

        Computed once per ImageSet (it reads every file): the cache key and the result share it.
        """
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        if self._array is not None:
            h.update(b"array\0")
            hash_file_into(h, self.location)
        else:
            for rel in self._all_paths:
                h.update(rel.encode() + b"\0")
                hash_file_into(h, self.location / rel)
        return h.hexdigest()


class ImageSubset:
    """Some images of an :class:`ImageSet`, in a given order (an ``ImageSource`` of its own).

    Index ``p`` of the subset is image ``indices[p]`` of the set.
    """

    def __init__(self, images: ImageSet, indices: np.ndarray):
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        position = {int(j): p for p, j in enumerate(self.indices)}
        for chunk, batch in self.images.batches(batch_size, self.indices):
            yield np.array([position[int(j)] for j in chunk], dtype=np.int64), batch

    def load(self, index: int) -> torch.Tensor:
        return self.images.load(int(self.indices[index]))

    def describe(self, index: int) -> dict:
        return self.images.describe(int(self.indices[index]))

    def class_labels(self, indices: np.ndarray) -> np.ndarray | None:
        return self.images.class_labels(self.indices[np.asarray(indices)])


def _decode(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(_to_rgb(im, size), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise GanauditError(
            f"cannot read image {path}: {e}; remove or replace it, or pass --skip-corrupt"
        ) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _to_rgb(im, size: tuple[int, int] | None):
    """An 8-bit RGB PIL image at ``size`` (H, W), converted as the module docstring says."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES:  # PIL's own conversion would clip 16-bit values at 255
        gray = np.asarray(im, dtype=np.float32) / 257.0
        im = Image.fromarray(np.clip(np.round(gray), 0, 255).astype(np.uint8), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    im = im.convert("RGB")
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return im


def open_image_set(location: Path | str, what: str = "--train", skip_corrupt: bool = False) -> ImageSet:
    """Open a folder of images, a ``.npz``/``.npy`` array file, or WebDataset/Parquet containers
    (``sources/containers.py``).

    Args:
        location: folder (recursive; ImageFolder layout gives labels) or array file.
        what: the flag it came from, for error messages.
        skip_corrupt: drop unreadable images instead of failing (see the module docstring).

    Raises:
        GanauditError: missing path, no images, unreadable or malformed files.
    """
    from ganaudit.sources.containers import is_container, open_container

    location = Path(location)
    if not location.exists():
        raise GanauditError(f"{what} {location}: no such file or directory")
    if is_container(location):  # WebDataset .tar shards, Parquet with image bytes
        return open_container(location, what, skip_corrupt)
    if location.is_dir():
        return _open_folder(location, what, skip_corrupt)
    if location.suffix.lower() in (".npz", ".npy"):
        return _open_array(location, what)
    kind = "an image" if location.suffix.lower() in IMAGE_EXTENSIONS else f"a {location.suffix or 'plain'} file"
    raise GanauditError(f"{what} {location}: expected a folder of images, a .npz/.npy, .tar (WebDataset) or "
                        f".parquet file, got {kind}")


def _open_folder(location: Path, what: str, skip_corrupt: bool) -> ImageSet:
    candidates = (p.relative_to(location).as_posix() for p in location.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS)
    files = sorted(rel for rel in candidates
                   if not any(part.startswith(".") for part in rel.split("/")) and (location / rel).is_file())
    if not files:
        raise GanauditError(
            f"{what} {location}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
        )
    labels, class_names = None, []
    if all("/" in f for f in files):
        class_names = sorted({f.split("/", 1)[0] for f in files})
        lookup = {name: i for i, name in enumerate(class_names)}
        labels = np.array([lookup[f.split("/", 1)[0]] for f in files], dtype=np.int64)
        if len(class_names) < 2:
            labels, class_names = None, []
    size = _first_size(location, files, skip_corrupt)
    log.info("%s: %d images in %s, %d classes, %dx%d", what, len(files), location, len(class_names), *size)
    return ImageSet(location, files, labels, class_names, size, skip_corrupt=skip_corrupt)


def _first_size(location: Path, files: list[str], skip_corrupt: bool) -> tuple[int, int]:
    """``(H, W)`` of the first readable image (skipped ones are counted when the set is streamed)."""
    for rel in files:
        try:
            first = _decode(location / rel, None)
        except GanauditError:
            if not skip_corrupt:
                raise
            continue
        return _capped((int(first.shape[1]), int(first.shape[2])))
    raise GanauditError(f"{location}: none of its {len(files)} images could be read")


def _capped(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled down to a long side of ``MAX_SIDE`` when it is longer (aspect kept)."""
    h, w = size
    if max(h, w) <= MAX_SIDE:
        return size
    scale = MAX_SIDE / max(h, w)
    capped = (max(1, round(h * scale)), max(1, round(w * scale)))
    log.info("images of %dx%d px are delivered at %dx%d (long side %d)", h, w, *capped, MAX_SIDE)
    return capped


def _open_array(location: Path, what: str) -> ImageSet:
    images, labels = open_array_file(location, what)
    value_range = array_value_range(images, what, location)
    class_names = [str(c) for c in range(int(labels.max()) + 1)] if labels is not None else []
    log.info("%s: %d images in %s, shape %s, %s, values in %s", what, len(images), location, images.shape,
             images.dtype, value_range)
    return ImageSet(location, None, labels, class_names, image_size(images.shape),
                    _array=images, _array_range=value_range)
