"""Image sets on disk, streamed in batches: folders of images and .npz/.npy arrays.

Every image becomes an RGB float32 tensor in [0, 1] with shape ``(3, H, W)``. Grayscale,
RGBA and palette images are converted to RGB (alpha is dropped, not composited). When a set
mixes sizes, every image is resized to the size of the first image (in sorted path order)
with PIL's antialiased bicubic filter, the same for every embedder; the embedder then resizes
to its own input size on the device.

Folders follow the torchvision ImageFolder layout when every image sits in a first-level
subfolder: the subfolder names are the class labels. Otherwise the folder is flat and
unlabelled. Decoding runs in a thread pool, one batch ahead of the consumer, so memory holds
at most two batches whatever the size of the set.
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

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_IMAGE_KEYS = ("images", "x", "samples", "arr_0")
_LABEL_KEYS = ("labels", "y", "targets")


@dataclass
class ImageSet:
    """A finite, indexable set of images with optional labels.

    Attributes:
        location: the folder or file it was read from.
        paths: per-image file path relative to ``location`` (folders), or ``None`` (arrays).
        labels: ``(N,)`` int64 class index per image, or ``None``.
        class_names: names of the classes, indexed by label.
        size: ``(H, W)`` every image is delivered at.
    """

    location: Path
    paths: list[str] | None
    labels: np.ndarray | None
    class_names: list[str]
    size: tuple[int, int]
    _array: np.ndarray | None = field(default=None, repr=False)
    _array_range: tuple[float, float] = (0.0, 1.0)
    skip_corrupt: bool = False
    n_corrupt: int = 0

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else int(self._array.shape[0])

    def describe(self, index: int) -> str:
        """A human-readable name of image ``index`` (its path, or ``file[index]``)."""
        if self.paths is not None:
            return self.paths[index]
        return f"{self.location.name}[{index}]"

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as a ``(3, H, W)`` float32 tensor in [0, 1]."""
        if self._array is not None:
            return _array_to_tensor(self._array[index : index + 1], self._array_range)[0]
        return _decode(self.location / self.paths[index], self.size)

    def batches(
        self, batch_size: int, indices: np.ndarray | None = None, workers: int = 4
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(indices, images)`` with images ``(B, 3, H, W)`` float32 in [0, 1].

        Args:
            batch_size: images per batch.
            indices: which images, in order (default: all).
            workers: decoding threads; the next batch decodes while the caller works.

        With ``skip_corrupt`` an unreadable file is dropped from its batch and counted in
        ``n_corrupt``; the yielded indices then leave it out too.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        if self._array is not None:
            for chunk in chunks:
                yield chunk, _array_to_tensor(self._array[chunk], self._array_range)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = None
            for chunk in chunks:
                futures = [pool.submit(self._decode_or_none, self.paths[i]) for i in chunk]
                if pending is not None:
                    yield _collect(*pending)
                pending = (chunk, futures)
            if pending is not None:
                yield _collect(*pending)

    def _decode_or_none(self, rel_path: str) -> torch.Tensor | None:
        try:
            return _decode(self.location / rel_path, self.size)
        except GanauditError:
            if not self.skip_corrupt:
                raise
            self.n_corrupt += 1
            log.warning("skipped corrupt image %s", rel_path)
            return None

    def fingerprint(self) -> str:
        """A content hash of the set: every file's bytes (folders) or the array's bytes."""
        h = hashlib.sha256()
        if self._array is not None:
            h.update(str(self._array.shape).encode())
            h.update(np.ascontiguousarray(self._array).tobytes())
        else:
            for rel in self.paths:
                h.update(rel.encode() + b"\0")
                h.update((self.location / rel).read_bytes())
        return h.hexdigest()


def _collect(chunk: np.ndarray, futures) -> tuple[np.ndarray, torch.Tensor]:
    images = [f.result() for f in futures]
    keep = np.array([im is not None for im in images], dtype=bool)
    if not keep.any():
        return chunk[:0], torch.empty(0, 3, 1, 1)
    return chunk[keep], torch.stack([im for im in images if im is not None])


def _decode(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GanauditError(
            f"cannot read image {path}: {e}; remove or replace it, or pass --skip-corrupt"
        ) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _array_to_tensor(arr: np.ndarray, value_range: tuple[float, float] = (0.0, 255.0)) -> torch.Tensor:
    """Convert ``(B, H, W, C)`` or ``(B, C, H, W)`` arrays to RGB float in [0, 1].

    ``value_range`` is the range the array's values live in (uint8 arrays: 0..255).
    """
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if not torch.is_floating_point(x):
        value_range = (0.0, 255.0)
    lo, hi = value_range
    x = (x.float() - lo) / (hi - lo)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        x = x[:, :3]
    return x.contiguous()


def open_image_set(location: Path | str, what: str = "--train", skip_corrupt: bool = False) -> ImageSet:
    """Open a folder of images or a ``.npz``/``.npy`` array file.

    Args:
        location: folder (recursive; ImageFolder layout gives labels) or array file.
        what: the flag it came from, for error messages.
        skip_corrupt: drop unreadable images instead of failing.

    Raises:
        GanauditError: missing path, no images, unreadable or malformed files.
    """
    location = Path(location)
    if not location.exists():
        raise GanauditError(f"{what} {location}: no such file or directory")
    if location.is_dir():
        return _open_folder(location, what, skip_corrupt)
    if location.suffix in (".npz", ".npy"):
        return _open_array(location, what)
    raise GanauditError(
        f"{what} {location}: expected a folder of images or a .npz/.npy file, got a {location.suffix or 'plain'} file"
    )


def _open_folder(location: Path, what: str, skip_corrupt: bool) -> ImageSet:
    files = sorted(
        p.relative_to(location).as_posix()
        for p in location.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
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
    first = _decode(location / files[0], None)
    size = (int(first.shape[1]), int(first.shape[2]))
    log.info("%s: %d images in %s, %d classes, %dx%d", what, len(files), location, len(class_names), *size)
    return ImageSet(location, files, labels, class_names, size, skip_corrupt=skip_corrupt)


def _open_array(location: Path, what: str) -> ImageSet:
    try:
        if location.suffix == ".npy":
            images, labels = np.load(location, mmap_mode="r", allow_pickle=False), None
        else:
            with np.load(location, allow_pickle=False) as data:
                key = next((k for k in _IMAGE_KEYS if k in data.files), None)
                if key is None:
                    raise GanauditError(f"{what} {location}: no image array; expected one of the keys {', '.join(_IMAGE_KEYS)}, found {', '.join(data.files)}")
                images = data[key]
                lkey = next((k for k in _LABEL_KEYS if k in data.files), None)
                labels = np.asarray(data[lkey], dtype=np.int64) if lkey else None
    except (OSError, ValueError) as e:
        raise GanauditError(f"{what} {location}: cannot read array file: {e}") from None
    if images.ndim != 4 or not (images.shape[-1] in (1, 3, 4) or images.shape[1] in (1, 3, 4)):
        raise GanauditError(f"{what} {location}: expected images of shape (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4; got {images.shape}")
    if images.shape[0] == 0:
        raise GanauditError(f"{what} {location}: the array holds no images")
    if labels is not None and labels.shape != (images.shape[0],):
        raise GanauditError(f"{what} {location}: labels have shape {labels.shape}, expected ({images.shape[0]},)")
    value_range = array_value_range(images, what, location)
    size = tuple(int(s) for s in _array_to_tensor(images[:1], value_range).shape[2:])
    class_names = [str(c) for c in range(int(labels.max()) + 1)] if labels is not None else []
    return ImageSet(location, None, labels, class_names, size, _array=images, _array_range=value_range)


def array_value_range(images: np.ndarray, what: str, location: Path) -> tuple[float, float]:
    """The value range of an image array: uint8 is 0..255; floats are [0, 1], [-1, 1] or 0..255."""
    if images.dtype == np.uint8:
        return (0.0, 255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise GanauditError(f"{what} {location}: images must be uint8 or float, got {images.dtype}")
    lo, hi = float(np.min(images)), float(np.max(images))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise GanauditError(f"{what} {location}: the image array holds NaN or Inf values")
    return detect_range(lo, hi)


def detect_range(lo: float, hi: float) -> tuple[float, float]:
    """Guess the value range of images from their minimum and maximum.

    Anything above 1.5 means 0..255; anything below -0.05 means [-1, 1]; else [0, 1].
    """
    if hi > 1.5:
        return (0.0, 255.0)
    if lo < -0.05:
        return (-1.0, 1.0)
    return (0.0, 1.0)
