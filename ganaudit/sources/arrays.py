"""Image arrays in ``.npy`` and ``.npz`` files, read a batch of rows at a time.

An :class:`ArrayFile` parses the ``.npy`` header and reads the rows it is asked for with a
seek and a read, so memory holds one batch, never the file (``np.load`` of an ``.npz`` member
would hold all of it; a memory map would grow the resident set to the file's size). Members
of an ``.npz`` written by ``np.savez`` are stored uncompressed and read at their offset in the
zip; members of ``np.savez_compressed`` are decompressed as a stream, which is fast in order
and slow for scattered reads (only the report's few pictures read out of order).

Accepted: ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in 1, 3, 4, or ``(N, H, W)`` grayscale;
uint8 (0..255), uint16 (0..65535) or float with values in [0, 1], [-1, 1] or [0, 255]
(detected from the whole array's minimum and maximum).
"""
from __future__ import annotations

import logging
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch

from ganaudit.errors import GanauditError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("images", "imgs", "x", "samples", "arr_0")
LABEL_KEYS = ("labels", "y", "targets")
_RANGE_CHUNK_BYTES = 64 << 20


class ArrayFile:
    """The rows of a ``.npy`` file or of one ``.npz`` member, read on demand.

    Attributes:
        shape, dtype: those of the stored array (dtype in native byte order).
    """

    def __init__(self, path: Path, member: str | None = None):
        self.path, self.member = Path(path), member
        self._lock = threading.Lock()
        self._zip, self._file, self._full = None, None, None
        f, base = self._open()
        try:
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"unsupported .npy format version {version}")
            self.shape, fortran_order, dtype = readers[version](f)
            self._data_start = f.tell() - base
        finally:
            self._close()
        if dtype.hasobject:
            raise ValueError("it holds Python objects, not numbers")
        self.dtype = dtype.newbyteorder("=")
        self._stored_dtype = dtype
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        if fortran_order and len(self.shape) > 1:  # rows are not contiguous: rare enough to load whole
            log.warning("%s is stored in Fortran order; reading it into memory whole", self._name())
            self._full = self._load_whole()

    def __len__(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    def __del__(self):
        try:
            self._close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def rows(self, indices) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed) as a new array ``(len(indices), *shape[1:])``."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self._full is not None:
            return np.ascontiguousarray(self._full[indices])
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        order = np.argsort(indices, kind="stable")
        wanted = indices[order]
        with self._lock:
            start = 0
            for stop in range(1, len(wanted) + 1):  # read each run of consecutive rows at once
                if stop == len(wanted) or wanted[stop] != wanted[stop - 1] + 1:
                    out[order[start:stop]] = self._read_run(int(wanted[start]), stop - start)
                    start = stop
        return out

    def _read_run(self, first: int, count: int) -> np.ndarray:
        f, base = self._handle()
        f.seek(base + self._data_start + first * self._row_bytes)
        data = f.read(count * self._row_bytes)
        if len(data) != count * self._row_bytes:
            raise GanauditError(f"{self._name()}: the file is truncated (row {first + count - 1} is missing)")
        return np.frombuffer(data, dtype=self._stored_dtype).reshape(count, *self.shape[1:])

    def chunks(self, max_bytes: int = _RANGE_CHUNK_BYTES):
        """Yield the whole array in consecutive blocks of rows of at most ``max_bytes``."""
        step = max(1, max_bytes // max(1, self._row_bytes))
        for start in range(0, len(self), step):
            yield self.rows(np.arange(start, min(start + step, len(self))))

    def _handle(self):
        if self._file is None:
            self._file, self._base = self._open()
        return self._file, self._base

    def _open(self):
        """A binary file object and the offset of the ``.npy`` data in it."""
        if self.member is None:
            self._file, self._base = open(self.path, "rb"), 0
            return self._file, 0
        self._zip = zipfile.ZipFile(self.path)
        info = self._zip.getinfo(self.member)
        if info.compress_type == zipfile.ZIP_STORED:
            f = open(self.path, "rb")
            f.seek(info.header_offset)
            local = f.read(30)  # the local file header: name and extra-field lengths at bytes 26..29
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            self._file, self._base = f, info.header_offset + 30 + name_len + extra_len
        else:
            self._file, self._base = self._zip.open(info), 0
        self._file.seek(self._base)
        return self._file, self._base

    def _close(self):
        for handle in (self._file, self._zip):
            if handle is not None:
                handle.close()
        self._file = self._zip = None

    def _load_whole(self) -> np.ndarray:
        if self.member is None:
            return np.load(self.path, allow_pickle=False)
        with np.load(self.path, allow_pickle=False) as data:
            return data[self.member[: -len(".npy")]]

    def _name(self) -> str:
        return f"{self.path}" + (f"[{self.member[: -len('.npy')]}]" if self.member else "")


def open_array_file(location: Path, what: str) -> tuple[ArrayFile, np.ndarray | None]:
    """The image rows and the labels (or None) of a ``.npy``/``.npz`` file, checked.

    Raises:
        GanauditError: unreadable file, no image key, wrong shape or dtype, bad labels.
    """
    try:
        if location.suffix == ".npy":
            images, labels = ArrayFile(location), None
        else:
            images, labels = _open_npz(location, what)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, struct.error) as e:
        raise GanauditError(f"{what} {location}: cannot read array file: {e}") from None
    shape = images.shape
    if not (len(shape) == 3 or (len(shape) == 4 and (shape[-1] in (1, 3, 4) or shape[1] in (1, 3, 4)))):
        raise GanauditError(
            f"{what} {location}: expected images of shape (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4, "
            f"or (N, H, W); got {shape}"
        )
    if shape[0] == 0:
        raise GanauditError(f"{what} {location}: the array holds no images")
    if not (images.dtype in (np.uint8, np.uint16) or np.issubdtype(images.dtype, np.floating)):
        raise GanauditError(f"{what} {location}: images must be uint8, uint16 or float, got {images.dtype}")
    if labels is not None:
        if labels.shape != (shape[0],) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise GanauditError(
                f"{what} {location}: labels must be {shape[0]} non-negative integers, one per image; "
                f"got {labels.dtype} of shape {labels.shape}"
            )
        labels = labels.astype(np.int64)
    return images, labels


def _open_npz(location: Path, what: str) -> tuple[ArrayFile, np.ndarray | None]:
    with zipfile.ZipFile(location) as z:
        members = [n for n in z.namelist() if n.endswith(".npy")]
    keys = [n[: -len(".npy")] for n in members]
    key = next((k for k in IMAGE_KEYS if k in keys), None)
    if key is None:
        raise GanauditError(
            f"{what} {location}: no image array; expected one of the keys {', '.join(IMAGE_KEYS)}, "
            f"found {', '.join(keys) or 'none'}"
        )
    label_key = next((k for k in LABEL_KEYS if k in keys), None)
    labels = None
    if label_key is not None:
        with np.load(location, allow_pickle=False) as data:
            labels = np.asarray(data[label_key])
    return ArrayFile(location, key + ".npy"), labels


def layout_of(shape: tuple[int, ...]) -> str:
    """``"NHW"``, ``"NHWC"`` or ``"NCHW"``: the axis that looks like channels (1, 3 or 4) holds them.

    When both axes could (tiny images, like ``(N, 4, 4, 3)``), the one of size 3 wins, and
    channels first when that does not decide.
    """
    if len(shape) == 3:
        return "NHW"
    first, last = shape[1] in (1, 3, 4), shape[-1] in (1, 3, 4)
    if first and last:
        return "NHWC" if shape[-1] == 3 and shape[1] != 3 else "NCHW"
    return "NHWC" if last else "NCHW"


def image_size(shape: tuple[int, ...]) -> tuple[int, int]:
    layout = layout_of(shape)
    return (int(shape[1]), int(shape[2])) if layout in ("NHW", "NHWC") else (int(shape[2]), int(shape[3]))


def array_value_range(images: ArrayFile | np.ndarray, what: str, location: Path) -> tuple[float, float]:
    """The value range of an image array: uint8 is 0..255, uint16 0..65535; floats are detected.

    Float arrays are scanned whole, block by block, for their minimum, maximum and any NaN/Inf.
    """
    if images.dtype == np.uint8:
        return (0.0, 255.0)
    if images.dtype == np.uint16:
        return (0.0, 65535.0)
    blocks = images.chunks() if isinstance(images, ArrayFile) else [np.asarray(images)]
    lo, hi = np.inf, -np.inf
    for block in blocks:
        if not np.isfinite(block).all():
            raise GanauditError(f"{what} {location}: the image array holds NaN or Inf values")
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
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


def array_to_tensor(arr: np.ndarray, value_range: tuple[float, float], layout: str | None = None) -> torch.Tensor:
    """Rows of an image array → ``(B, 3, H, W)`` float32 RGB in [0, 1].

    ``value_range`` is the range the values live in; 1-channel images are repeated to RGB and
    the alpha channel of 4-channel images is dropped.
    """
    layout = layout or layout_of(arr.shape)
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    lo, hi = value_range
    x = ((x.float() - lo) / (hi - lo)).clamp_(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        x = x[:, :3]
    return x.contiguous()
