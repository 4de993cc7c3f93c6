"""Planted partial copies from scikit-image's bundled photographs (no download).

Training images are non-overlapping cells of some photos; holdout and novel images are
random crops of other photos (so the two are exchangeable: the false-flag check is fair);
a planted partial copy is a novel image (or noise) with a square of side ``size / 2`` (a
quarter of the area) cut from a training image pasted in, at its own position or moved.
The square is drawn among those with some detail (grey std at least 0.08): region search
skips flat tiles by design, so a copied patch of black sky is not counted as missed.
"""
from __future__ import annotations

import numpy as np
import torch

TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera", "moon", "coins",
                "hubble_deep_field")
OTHER_PHOTOS = ("retina", "clock", "grass", "gravel", "brick", "colorwheel", "page", "text", "cell")


MIN_REGION_STD = 0.08 * 255  # planted regions have grey-level detail


class ArraySource:
    """An in-memory image source (``batches``, ``subset``, ``size``) over uint8 NHWC arrays."""

    def __init__(self, arr: np.ndarray):
        self.arr, self.size = arr, arr.shape[1:3]

    def __len__(self) -> int:
        return len(self.arr)

    def batches(self, batch_size: int):
        for i in range(0, len(self.arr), batch_size):
            idx = np.arange(i, min(i + batch_size, len(self.arr)))
            yield idx, torch.from_numpy(self.arr[idx]).permute(0, 3, 1, 2).float() / 255

    def subset(self, idx):
        return ArraySource(self.arr[np.asarray(idx)])


def _photo(name: str, size: int) -> np.ndarray:
    """An (H, W, 3) uint8 photo, scaled so that its short side is at least 4 cells of ``size``."""
    import skimage.data
    from PIL import Image

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3].astype(np.uint8)
    short = min(arr.shape[:2])
    scale = max(1.0, 4 * size / short)
    if scale > 1:
        im = Image.fromarray(arr).resize((round(arr.shape[1] * scale), round(arr.shape[0] * scale)),
                                         Image.Resampling.BICUBIC)
        arr = np.asarray(im)
    return arr


def train_cells(size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` non-overlapping ``size``-px cells of the training photos, (n, size, size, 3) uint8."""
    cells = []
    for name in TRAIN_PHOTOS:
        photo = _photo(name, size)
        h, w = photo.shape[0] // size, photo.shape[1] // size
        cells += [photo[r * size:(r + 1) * size, c * size:(c + 1) * size] for r in range(h) for c in range(w)]
    cells = np.stack(cells)
    return cells[np.sort(rng.choice(len(cells), size=n, replace=False))]


def other_crops(size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random ``size``-px crops of the other photos, (n, size, size, 3) uint8."""
    photos = [_photo(name, size) for name in OTHER_PHOTOS]
    out = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        y = rng.integers(photo.shape[0] - size + 1)
        x = rng.integers(photo.shape[1] - size + 1)
        out.append(photo[y:y + size, x:x + size])
    return np.stack(out)


def plant(train: np.ndarray, backgrounds: np.ndarray, rng: np.random.Generator, moved: bool,
          noise_share: float = 0.25) -> tuple[np.ndarray, list[dict]]:
    """Paste a half-side square of a random training image into each background.

    Returns:
        ``(images, truth)``: truth per image ``{"train_index", "train_box", "sample_box"}``
        (``(x, y, w, h)`` px). A ``noise_share`` of the backgrounds are replaced by noise.
    """
    size = train.shape[1]
    side = size // 2
    images, truth = backgrounds.copy(), []
    for i in range(len(images)):
        if rng.random() < noise_share:
            images[i] = rng.integers(0, 256, size=images[i].shape, dtype=np.uint8)
        for _ in range(100):  # a region with detail: a flat patch of sky is no evidence of copying
            t = int(rng.integers(len(train)))
            y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if train[t, y0:y0 + side, x0:x0 + side].mean(axis=-1).std() >= MIN_REGION_STD:
                break
        y1, x1 = (int(v) for v in rng.integers(0, size - side + 1, size=2)) if moved else (y0, x0)
        images[i, y1:y1 + side, x1:x1 + side] = train[t, y0:y0 + side, x0:x0 + side]
        truth.append({"train_index": t, "train_box": (x0, y0, side, side), "sample_box": (x1, y1, side, side)})
    return images, truth


def planted_sets(size: int, n_train: int, n_holdout: int, n_novel: int, n_planted: int, seed: int = 0) -> dict:
    """Every array a region test needs, uint8 NHWC."""
    rng = np.random.default_rng(seed)
    train = train_cells(size, n_train, rng)
    others = other_crops(size, n_holdout + n_novel + 2 * n_planted, rng)
    holdout, novel = others[:n_holdout], others[n_holdout:n_holdout + n_novel]
    backgrounds = others[n_holdout + n_novel:]
    own, own_truth = plant(train, backgrounds[:n_planted], rng, moved=False)
    moved, moved_truth = plant(train, backgrounds[n_planted:], rng, moved=True)
    return {"train": train, "holdout": holdout, "novel": novel, "own": own, "own_truth": own_truth,
            "moved": moved, "moved_truth": moved_truth}


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / min(a[2] * a[3], b[2] * b[3])
