"""Planted ground truth from photographs that ship with scikit-image: 64×64 (or smaller) crops.

The photos are cut into non-overlapping tiles, shuffled with a seed and dealt into a
training set, a holdout set and "fresh" generated samples (new images from the same
distribution: what a generator that does not copy produces). Then, as real data has them:

- ``holdout_duplicates``: a share of the holdout replaced by near-duplicates of training tiles
  (exact, re-encoded as JPEG q90, shifted by one pixel), as Barz & Denzler (2020) found for
  3.3% of CIFAR-10's test images;
- ``train_groups``: training tiles that appear more than once in the training set;
- ``blank``: low-information images (flat grey pages with a faint gradient and sensor noise)
  in each split;
- ``copies``: generated samples that are edited copies of training tiles, ``per_kind`` of each
  kind in ``COPY_KINDS``.

Everything is returned as uint8 ``(N, H, W, 3)`` arrays with the ground truth beside them;
``write_npz`` stores the three sets as the ``.npz`` files ``ganaudit check`` reads.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "clock", "grass",
          "gravel", "brick", "hubble_deep_field", "immunohistochemistry", "retina", "cell", "colorwheel", "text")
COPY_KINDS = ("exact", "hflip", "shift", "noise", "brightness", "jpeg40")


def photo_tiles(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Every non-overlapping ``size``×``size`` tile of the photos, uint8 RGB ``(N, size, size, 3)``,
    and the index in ``PHOTOS`` of the photo each comes from."""
    import skimage.data

    tiles, labels = [], []
    for p, name in enumerate(PHOTOS):
        img = np.asarray(getattr(skimage.data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        if name == "retina":  # 1411 px: halve it so it does not outnumber the rest
            img = np.asarray(Image.fromarray(img).resize((705, 705), Image.BICUBIC))
        h, w = img.shape[:2]
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                tiles.append(img[y:y + size, x:x + size])
                labels.append(p)
    return np.stack(tiles), np.array(labels)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by ``(dx, dy)`` pixels, replicating the edges."""
    h, w = img.shape[:2]
    padded = np.pad(img, ((abs(dy),) * 2, (abs(dx),) * 2, (0, 0)), mode="edge")
    return padded[abs(dy) - dy: abs(dy) - dy + h, abs(dx) - dx: abs(dx) - dx + w]


def edit(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One edited copy of ``img`` (uint8 HWC) of ``kind`` (``COPY_KINDS``, or ``jpeg90``/``shift1``)."""
    unit = max(1, img.shape[0] // 32)
    if kind == "exact":
        return img.copy()
    if kind == "hflip":
        return img[:, ::-1].copy()
    if kind == "shift":
        return shift(img, 2 * unit, -unit)
    if kind == "shift1":
        return shift(img, unit, 0)
    if kind == "noise":
        return np.clip(np.round(img + rng.normal(0, 8.0, img.shape)), 0, 255).astype(np.uint8)
    if kind == "brightness":
        return np.clip(np.round(img * 1.1 + 12), 0, 255).astype(np.uint8)
    if kind.startswith("jpeg"):
        return jpeg(img, int(kind[4:]))
    raise ValueError(kind)


def blank_pages(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Low-information images: a flat grey level, a faint gradient (≤ 3 grey levels) and noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        level = rng.uniform(60, 230)
        angle = rng.uniform(0, 2 * np.pi)
        gradient = 3.0 * (np.cos(angle) * xx + np.sin(angle) * yy)
        img = level + gradient[..., None] + rng.normal(0, 0.6, (size, size, 3))
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


@dataclass
class PlantedSplit:
    train: np.ndarray
    holdout: np.ndarray
    generated: np.ndarray
    copy_kind: np.ndarray  # per generated sample: a COPY_KINDS name, "fresh" or "blank"
    copy_source: np.ndarray  # per generated sample: the training index it copies, or -1
    holdout_dup_source: np.ndarray  # per holdout image: the training index it duplicates, or -1
    holdout_blank: np.ndarray  # per holdout image: planted blank page
    train_groups: list[list[int]] = field(default_factory=list)  # planted duplicate groups in train
    train_blank: np.ndarray | None = None
    train_photo: np.ndarray | None = None  # per training image: the photo (its class), blanks last


def planted_split(n_train: int = 400, n_holdout: int = 200, n_fresh: int = 300, per_kind: int = 10,
                  dup_share: float = 0.03, n_train_groups: int = 4, n_blank: int = 4, size: int = 64,
                  seed: int = 0) -> PlantedSplit:
    """The planted split described in the module docstring.

    ``n_train`` counts the training images including the planted group members and blanks;
    ``n_holdout`` the holdout including its duplicates and blanks.
    """
    rng = np.random.default_rng(seed)
    tiles, photo = photo_tiles(64)
    order = rng.permutation(len(tiles))
    tiles, photo = tiles[order], photo[order]
    if size != 64:
        tiles = np.stack([np.asarray(Image.fromarray(t).resize((size, size), Image.BICUBIC)) for t in tiles])
    n_extra = n_train_groups  # each group adds one more member of a training tile
    n_unique_train = n_train - n_extra - n_blank
    n_dup = int(round(dup_share * n_holdout))
    n_clean_holdout = n_holdout - n_dup - n_blank
    need = n_unique_train + n_clean_holdout + n_fresh
    if need > len(tiles):
        raise ValueError(f"asked for {need} distinct tiles, the photos give {len(tiles)}")
    train = list(tiles[:n_unique_train])
    train_photo = list(photo[:n_unique_train])
    holdout_clean = tiles[n_unique_train:n_unique_train + n_clean_holdout]
    fresh = tiles[n_unique_train + n_clean_holdout:need]

    groups = []
    for g in range(n_train_groups):  # a training tile stored twice, the second copy re-encoded
        t = int(rng.integers(n_unique_train))
        train.append(jpeg(train[t], 90) if g % 2 else train[t].copy())
        train_photo.append(train_photo[t])
        groups.append([t, len(train) - 1])
    train_blank = np.zeros(n_train, bool)
    train_blank[len(train):] = True
    train.extend(blank_pages(n_blank, size, rng))
    train_photo.extend([len(PHOTOS)] * n_blank)  # the blank pages are a class of their own
    train = np.stack(train)

    dup_kinds = ("exact", "jpeg90", "shift1")
    dup_sources = rng.choice(n_unique_train, size=n_dup, replace=False)
    dups = [edit(train[t], dup_kinds[i % 3], rng) for i, t in enumerate(dup_sources)]
    holdout = np.concatenate([holdout_clean, np.stack(dups) if dups else holdout_clean[:0],
                              blank_pages(n_blank, size, rng)])
    dup_source = np.r_[np.full(n_clean_holdout, -1), dup_sources, np.full(n_blank, -1)]
    blank = np.r_[np.zeros(n_clean_holdout + n_dup, bool), np.ones(n_blank, bool)]
    order = rng.permutation(len(holdout))
    holdout, dup_source, blank = holdout[order], dup_source[order], blank[order]

    copy_sources = rng.choice(n_unique_train, size=per_kind * len(COPY_KINDS), replace=False)
    copies = [edit(train[t], COPY_KINDS[i // per_kind], rng) for i, t in enumerate(copy_sources)]
    generated = np.concatenate([np.stack(copies) if copies else fresh[:0], fresh, blank_pages(n_blank, size, rng)])
    kind = np.array([COPY_KINDS[i // per_kind] for i in range(len(copies))] + ["fresh"] * len(fresh)
                    + ["blank"] * n_blank)
    source = np.r_[copy_sources, np.full(len(fresh) + n_blank, -1)]
    order = rng.permutation(len(generated))
    return PlantedSplit(train, holdout, generated[order], kind[order], source[order], dup_source, blank,
                        groups, train_blank, np.array(train_photo))


def write_npz(split: PlantedSplit, root: Path) -> dict[str, Path]:
    """Write ``train.npz``, ``holdout.npz`` and ``samples.npz`` under ``root``; return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, images in (("train", split.train), ("holdout", split.holdout), ("samples", split.generated)):
        paths[name] = root / f"{name}.npz"
        extra = {"labels": split.train_photo} if name == "train" else {}
        np.savez(paths[name], images=images, **extra)
    return paths
