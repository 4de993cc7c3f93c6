"""Region search: partial copies, a region of a training image reproduced on a new background.

Whole-image search misses a sample whose only copied part is an object or a patch
(Somepalli et al. 2023, "Diffusion art or digital forgery?"): the rest of the image pulls
its descriptor away from the training image's. Region search compares tiles instead.

Geometry (fractions of each image's own side, so 64 and 1024 px behave alike):

- a tile is ``TILE_FRACTION`` (3/8) of the image's height and width;
- training images are cut at a stride of ``TRAIN_STRIDE_FRACTION`` (1/8): 6 × 6 = 36
  tiles an image, all of them indexed in one FAISS index (:func:`build_index`: exact in
  blocks, IVF past ``approx_above`` tiles);
- images under test (and the reference images) are cut at the finer ``QUERY_STRIDE_FRACTION``
  (1/16): 11 × 11 = 121 tiles an image.

A copied region of at least half the side (a quarter of the area) contains a whole training
tile wherever it sat in the training image (3/8 + 1/8 = 1/2), and wherever it is pasted in
the sample some query tile lies within half a query stride (1/32 of the side) of that
tile's content, which the copy descriptor's blur absorbs. So a region reproduced at its own
position or moved anywhere is found; one that is scaled or flipped is not (whole-image search
keeps its test-time augmentations; tiles have none).

Scoring is whole-image search's: each query tile gets the relative nearest-neighbour score
``d1 / mean(d2..d_{k+1})`` (:func:`~ganaudit.metrics.copy_stats.relative_nn_score`), where
the neighbours are the best tile of each of the ``k + 1`` nearest *distinct* training
images (a training image's overlapping tiles would otherwise be each other's neighbours).
An image's score is its most copy-like tile's. Reference images (the holdout, or training
images leave-one-out with every tile of the image itself excluded) are scored the same way,
and the calibration of :mod:`ganaudit.search.calibration` turns the scores into flags at
level ``alpha``.

Low-information tiles (flat sky, blank paper, padding) match each other whatever the
images: a tile whose grey-level standard deviation is below ``MIN_TILE_STD`` is neither
indexed nor searched, and the counts are reported. An image all of whose tiles are flat
scores ``inf`` (never flagged).

Cost: ``36 × N_train`` index rows of ``D`` float32 (``36 × N_train × D × 4`` bytes; 768-d
``pixels-copy``: 110 KB a training image) and ``121 + 32 × 24`` searches per image under test (the grid, then
each image's ``REFINE_TILES`` best tiles at 24 finer shifts). Past
``max_tiles`` rows a seeded subset of the training images is indexed, and the result says
how many (docs/regions.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ganaudit.metrics.copy_stats import cosine_to_distance, relative_nn_score
from ganaudit.progress import progress_bar

log = logging.getLogger(__name__)

TILE_FRACTION = 3 / 8
TRAIN_STRIDE_FRACTION = 1 / 8
QUERY_STRIDE_FRACTION = 1 / 16
MIN_TILE_STD = 0.02  # grey-level standard deviation in [0, 1] units (about 5 of 255 levels)
MIN_TILE_PX = 4  # images under 4 / TILE_FRACTION ≈ 11 px on a side are not tiled
NEIGHBOUR_FACTOR = 4  # tiles searched per distinct training image wanted
REFINE_TILES = 32  # best query tiles of each image searched again at finer shifts
MAX_NEIGHBOURS = 2048  # faiss on a GPU returns at most this many
EMBED_CHUNK = 4096  # tiles per embedder call
DEFAULT_MAX_TILES = 2_000_000  # index rows; 2M × 768 × 4 B ≈ 6.1 GB


@dataclass(frozen=True)
class TileGrid:
    """Where an ``(H, W)`` image is cut: tile size ``(th, tw)`` and its top-left corners.

    Attributes:
        size: ``(H, W)`` of the image.
        tile: ``(th, tw)`` pixels.
        positions: ``(P, 2)`` int ``(y, x)`` of each tile's top-left corner, row-major.
    """

    size: tuple[int, int]
    tile: tuple[int, int]
    positions: np.ndarray

    @classmethod
    def of(cls, size: tuple[int, int], stride_fraction: float) -> "TileGrid":
        h, w = int(size[0]), int(size[1])
        th, tw = max(1, round(h * TILE_FRACTION)), max(1, round(w * TILE_FRACTION))
        ys = _axis_positions(h, th, max(1, round(h * stride_fraction)))
        xs = _axis_positions(w, tw, max(1, round(w * stride_fraction)))
        positions = np.array([(y, x) for y in ys for x in xs], dtype=np.int64)
        return cls((h, w), (th, tw), positions)

    def box(self, p: int) -> tuple[int, int, int, int]:
        """Tile ``p`` as ``(x, y, w, h)`` in pixels."""
        y, x = self.positions[p]
        return int(x), int(y), self.tile[1], self.tile[0]


def tileable(size: tuple[int, int]) -> bool:
    """Whether images of ``(H, W)`` are large enough to tile."""
    return min(size) * TILE_FRACTION >= MIN_TILE_PX


def _axis_positions(n: int, tile: int, stride: int) -> list[int]:
    last = n - tile
    positions = list(range(0, last + 1, stride))
    if positions[-1] != last:  # the far edge is always covered
        positions.append(last)
    return positions


def cut_tiles(images: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, P, 3, th, tw)``: every tile of ``grid`` of every image."""
    th, tw = grid.tile
    return torch.stack([images[:, :, y : y + th, x : x + tw] for y, x in grid.positions.tolist()], dim=1)


def informative(tiles: torch.Tensor) -> np.ndarray:
    """``(B, P, 3, th, tw)`` → ``(B, P)`` bool: tiles whose grey-level std is at least ``MIN_TILE_STD``."""
    grey = tiles.float().mean(dim=2).flatten(2)
    return (grey.std(dim=2, correction=0) >= MIN_TILE_STD).cpu().numpy()


def embed_tiles(tiles: torch.Tensor, embedder) -> np.ndarray:
    """``(T, 3, th, tw)`` tiles → ``(T, D)`` float32 copy features, in chunks of ``EMBED_CHUNK``."""
    if len(tiles) == 0:
        return np.empty((0, embedder.spec.dim), np.float32)
    return np.concatenate([embedder.embed(tiles[i : i + EMBED_CHUNK]) for i in range(0, len(tiles), EMBED_CHUNK)])


@dataclass
class TrainTiles:
    """The training set's tiles: features and where each came from.

    Attributes:
        features: ``(T, D)`` float32 copy features of the informative tiles.
        image: ``(T,)`` int64 training index of each tile.
        tile: ``(T,)`` int64 position of each tile in ``grid``.
        grid: the training images' tile grid.
        n_images: training images tiled (all of them unless capped by ``max_tiles``).
        n_skipped: flat tiles left out.
        n_train: images in the training set.
        descriptor: the name of the embedder that made ``features``.
    """

    features: np.ndarray
    image: np.ndarray
    tile: np.ndarray
    grid: TileGrid
    n_images: int
    n_skipped: int
    n_train: int
    descriptor: str = ""

    n_rows: int = 0
    nbytes: int = 0

    def __post_init__(self):
        self.n_rows, self.nbytes = len(self.features), int(self.features.nbytes)

    @property
    def n_indexed_images(self) -> int:
        return int(np.unique(self.image).size)

    def release_features(self) -> None:
        """Drop the features once an index holds its own copy (they are not needed again)."""
        self.features = self.features[:0]


def tile_training_set(train, embedder, batch_size: int, max_tiles: int = DEFAULT_MAX_TILES, seed: int = 0,
                      progress: bool | None = None) -> TrainTiles:
    """Cut and embed every training image at the training stride (``TRAIN_STRIDE_FRACTION``).

    When ``len(train) × tiles-per-image`` exceeds ``max_tiles``, a seeded subset of
    ``max_tiles // tiles-per-image`` training images is tiled instead (logged, and recorded
    in ``n_images``).
    """
    grid = TileGrid.of(tuple(train.size), TRAIN_STRIDE_FRACTION)
    per_image = len(grid.positions)
    n = len(train)
    chosen = np.arange(n)
    if n * per_image > max_tiles:
        keep = max(3, max_tiles // per_image)
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(n, keep), replace=False))
        log.warning("region search indexes %d of %d training images (%d tiles each; at most %d tiles)",
                    len(chosen), n, per_image, max_tiles)
    source = train if len(chosen) == n else train.subset(chosen)
    feats, images, tiles, skipped = [], [], [], 0
    with progress_bar(len(source), "tiling train", progress) as bar:
        for indices, batch in source.batches(batch_size):
            cut = cut_tiles(batch, grid)
            keep = informative(cut)
            skipped += int((~keep).sum())
            b, p = np.nonzero(keep)
            feats.append(embed_tiles(cut[torch.from_numpy(b), torch.from_numpy(p)], embedder))
            images.append(chosen[np.asarray(indices)[b]])
            tiles.append(p)
            bar.update(len(indices))
    return TrainTiles(np.concatenate(feats).astype(np.float32, copy=False), np.concatenate(images).astype(np.int64),
                      np.concatenate(tiles).astype(np.int64), grid, len(chosen), skipped, n, embedder.spec.name)


@dataclass
class RegionMatches:
    """Each searched image's most copy-like tile, and every query tile's match.

    Attributes:
        score: ``(M,)`` float64 relative score of the best tile (``inf``: every tile flat).
        distance: ``(M,)`` its Euclidean distance to the matched training tile.
        similarity: ``(M,)`` its cosine similarity (``ip`` copy embedders), else NaN.
        train_index: ``(M,)`` int64 training image matched (-1: none).
        tile_score: ``(M, Q)`` float32 score of every query tile (``inf`` for flat ones).
        tile_match: ``(M, Q)`` int64 row of the training tile each query tile matched (-1: flat).
        tile_shift: ``(M, Q, 2)`` int16 ``(dy, dx)`` px the tile was moved by when refined.
        n_skipped: query tiles skipped as flat.
    """

    score: np.ndarray
    distance: np.ndarray
    similarity: np.ndarray
    train_index: np.ndarray
    tile_score: np.ndarray
    tile_match: np.ndarray
    tile_shift: np.ndarray
    n_skipped: int = 0
    grid: TileGrid | None = field(default=None, repr=False)

    @staticmethod
    def concatenate(parts: list["RegionMatches"], grid: TileGrid | None, q: int) -> "RegionMatches":
        if not parts:
            return RegionMatches(np.empty(0), np.empty(0), np.empty(0), np.empty(0, np.int64),
                                 np.empty((0, q), np.float32), np.empty((0, q), np.int64),
                                 np.empty((0, q, 2), np.int16), 0, grid)
        fields = ("score", "distance", "similarity", "train_index", "tile_score", "tile_match", "tile_shift")
        joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
        return RegionMatches(**joined, n_skipped=sum(p.n_skipped for p in parts), grid=grid)


class RegionSearcher:
    """Scores the tiles of image batches against the training tiles (see the module docstring).

    Args:
        index: a ``SearchIndex`` over ``train_tiles.features``.
        train_tiles: what the index rows are.
        embedder: the copy embedder that made them.
        copy_k: neighbours (distinct training images) the nearest distance is compared with.
    """

    def __init__(self, index, train_tiles: TrainTiles, embedder, copy_k: int):
        self.index, self.train_tiles, self.embedder = index, train_tiles, embedder
        n_images = train_tiles.n_indexed_images
        self.k = min(copy_k, n_images - 2)
        if self.k < 1:
            raise ValueError("region search needs informative tiles from at least 3 training images")
        self._grids: dict[tuple[int, int], TileGrid] = {}

    def grid(self, size: tuple[int, int]) -> TileGrid:
        size = (int(size[0]), int(size[1]))
        if size not in self._grids:
            self._grids[size] = TileGrid.of(size, QUERY_STRIDE_FRACTION)
        return self._grids[size]

    def __call__(self, images: torch.Tensor, exclude: np.ndarray | None = None) -> RegionMatches:
        """Search one batch ``(B, 3, H, W)``; ``exclude``: ``(B,)`` training index each image is
        (leave-one-out: no tile of that training image is a neighbour)."""
        grid = self.grid(tuple(images.shape[-2:]))
        cut = cut_tiles(images, grid)
        b_count, q_count = cut.shape[:2]
        keep = informative(cut)
        b, p = np.nonzero(keep)
        own_all = None if exclude is None else np.asarray(exclude, dtype=np.int64)
        tile_score = np.full((b_count, q_count), np.inf, np.float32)
        tile_match = np.full((b_count, q_count), -1, np.int64)
        tile_shift = np.zeros((b_count, q_count, 2), np.int16)
        best_dist = np.full((b_count, q_count), np.nan)
        best_sim = np.full((b_count, q_count), np.nan)
        if len(b):
            feats = embed_tiles(cut[torch.from_numpy(b), torch.from_numpy(p)], self.embedder)
            score, dist, sim, row = self._score(feats, None if own_all is None else own_all[b])
            tile_score[b, p], tile_match[b, p], best_dist[b, p], best_sim[b, p] = score, row, dist, sim
            self._refine(images, grid, own_all, tile_score, tile_match, tile_shift, best_dist, best_sim)
        best = np.argmin(tile_score, axis=1)
        rows = np.arange(b_count)
        match = tile_match[rows, best]
        return RegionMatches(
            score=tile_score[rows, best].astype(np.float64),
            distance=best_dist[rows, best], similarity=best_sim[rows, best],
            train_index=np.where(match >= 0, self.train_tiles.image[np.maximum(match, 0)], -1),
            tile_score=tile_score, tile_match=tile_match, tile_shift=tile_shift,
            n_skipped=int((~keep).sum()), grid=grid,
        )

    def _refine(self, images, grid: TileGrid, own, tile_score, tile_match, tile_shift, best_dist, best_sim) -> None:
        """Search again around each image's ``REFINE_TILES`` best query tiles, shifted by up to half
        a query stride in steps of a quarter (``refine_offsets``), keeping any better score in place."""
        offsets = np.array(refine_offsets(grid), dtype=np.int64)  # (S, 2)
        offsets = offsets[(offsets != 0).any(axis=1)]
        top = np.argsort(tile_score, axis=1, kind="stable")[:, :REFINE_TILES]  # (B, R)
        th, tw = grid.tile
        h, w = grid.size
        i_idx = np.repeat(np.arange(len(images)), top.shape[1])
        q_idx = top.ravel()
        live = np.isfinite(tile_score[i_idx, q_idx])
        i_idx, q_idx = i_idx[live], q_idx[live]
        if not len(i_idx):
            return
        corner = grid.positions[q_idx][:, None, :] + offsets[None]  # (n, S, 2)
        corner[..., 0] = np.clip(corner[..., 0], 0, h - th)
        corner[..., 1] = np.clip(corner[..., 1], 0, w - tw)
        i_all = np.repeat(i_idx, len(offsets))
        q_all = np.repeat(q_idx, len(offsets))
        corner = corner.reshape(-1, 2)
        moved = (corner != grid.positions[q_all]).any(axis=1)
        i_all, q_all, corner = i_all[moved], q_all[moved], corner[moved]
        ys = torch.from_numpy(corner[:, 0, None] + np.arange(th)[None])  # (n, th)
        xs = torch.from_numpy(corner[:, 1, None] + np.arange(tw)[None])  # (n, tw)
        tiles = images[torch.from_numpy(i_all)[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # (n, th, tw, 3)
        tiles = tiles.permute(0, 3, 1, 2)
        keep = informative(tiles[:, None])[:, 0]
        if not keep.any():
            return
        i_all, q_all, corner = i_all[keep], q_all[keep], corner[keep]
        feats = embed_tiles(tiles[torch.from_numpy(np.flatnonzero(keep))].contiguous(), self.embedder)
        score, dist, sim, row = self._score(feats, None if own is None else own[i_all])
        delta = corner - grid.positions[q_all]
        where = np.column_stack([i_all, q_all, delta])
        for (i, q, dy, dx), s, d, c, r in zip(where, score, dist, sim, row):
            if s < tile_score[i, q]:
                tile_score[i, q], tile_match[i, q], best_dist[i, q], best_sim[i, q] = s, r, d, c
                tile_shift[i, q] = (dy, dx)

    def _score(self, feats: np.ndarray, own: np.ndarray | None):
        """Relative score of each query tile over its ``k + 1`` nearest distinct training images."""
        tt = self.train_tiles
        per_image = len(tt.grid.positions)
        want = self.k + 1
        n_search = min(self.index.ntotal, MAX_NEIGHBOURS,
                       want * NEIGHBOUR_FACTOR + (per_image if own is not None else 0))
        raw, idx = self.index.search(feats, n_search)
        img = np.where(idx >= 0, tt.image[np.maximum(idx, 0)], -1)
        first = _first_per_row(img)
        if own is not None:
            first &= img != own[:, None]
        first &= idx >= 0
        rank = np.cumsum(first, axis=1)
        chosen = first & (rank <= want)
        # the k + 1 chosen neighbours of each row, in rank order; rows short of them repeat their last
        order = np.argsort(~chosen, axis=1, kind="stable")[:, :want]
        count = chosen.sum(axis=1)
        if (count == 0).any():
            raise ValueError("a query tile found no training tile outside its own image")
        col = np.minimum(np.arange(want)[None, :], (count - 1)[:, None])
        pick = np.take_along_axis(order, col, axis=1)
        near_raw = np.take_along_axis(raw, pick, axis=1).astype(np.float64)
        if self.index.metric == "ip":
            dist = cosine_to_distance(near_raw)
            sim = near_raw[:, 0]
        else:
            dist, sim = near_raw, np.full(len(near_raw), np.nan)
        dist = np.maximum.accumulate(dist, axis=1)  # float rounding must not unsort a row
        rows = np.take_along_axis(idx, pick[:, :1], axis=1)[:, 0]
        return relative_nn_score(dist), dist[:, 0], sim, rows


def refine_offsets(grid: TileGrid) -> list[tuple[int, int]]:
    """``(dy, dx)`` shifts of a refined tile: within half a query stride, in quarter-stride steps."""
    out = []
    for axis in (0, 1):
        stride = max(1, round(grid.size[axis] * QUERY_STRIDE_FRACTION))
        half, step = stride // 2, max(1, round(stride / 4))
        out.append(sorted(set(range(-half, half + 1, step)) | {0}))
    return [(dy, dx) for dy in out[0] for dx in out[1]]


def _first_per_row(labels: np.ndarray) -> np.ndarray:
    """``(M, K)`` → bool, True where a label appears for the first time in its row."""
    m, k = labels.shape
    order = np.argsort(labels, axis=1, kind="stable")  # equal labels keep their rank order
    sorted_labels = np.take_along_axis(labels, order, axis=1)
    is_first_sorted = np.ones((m, k), dtype=bool)
    is_first_sorted[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    out = np.zeros((m, k), dtype=bool)
    np.put_along_axis(out, order, is_first_sorted, axis=1)
    return out


def search_regions(source, searcher: RegionSearcher, batch_size: int, label: str, progress: bool | None,
                   exclude_of: np.ndarray | None = None) -> RegionMatches:
    """Search every batch of an image source; ``exclude_of``: ``(N,)`` training index of each image."""
    parts, grid = [], None
    with progress_bar(len(source), label, progress) as bar:
        for indices, batch in source.batches(batch_size):
            parts.append(searcher(batch, None if exclude_of is None else exclude_of[indices]))
            grid = parts[-1].grid
            bar.update(len(indices))
    return RegionMatches.concatenate(parts, grid, 0 if grid is None else len(grid.positions))


class RegionTap:
    """A batch source that also region-searches each batch as it streams past (generated images
    are never kept); after the pass :meth:`matches` holds the result."""

    def __init__(self, source, searcher: RegionSearcher):
        self._source, self._searcher, self._parts = source, searcher, []

    def __len__(self) -> int:
        return len(self._source)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._source, name)

    def batches(self, batch_size: int):
        for indices, batch in self._source.batches(batch_size):
            self._parts.append(self._searcher(batch))
            yield indices, batch

    def matches(self) -> RegionMatches:
        grid = self._parts[-1].grid if self._parts else None
        return RegionMatches.concatenate(self._parts, grid, 0 if grid is None else len(grid.positions))


def reference_regions(train, holdout, searcher: RegionSearcher, seed: int, calibration_max: int, batch_size: int,
                      progress: bool | None) -> tuple[RegionMatches, dict]:
    """Reference scores of non-copies: holdout images, or (without a holdout) a seeded subset of
    at most ``calibration_max`` training images, leave-one-out (none of their own tiles)."""
    if holdout is not None:
        ref = search_regions(holdout, searcher, batch_size, "regions: calibrating on holdout", progress)
        return ref, {"method": "holdout", "n_reference": len(ref.score)}
    rng = np.random.default_rng(seed)
    n = min(len(train), calibration_max)
    chosen = np.sort(rng.choice(len(train), size=n, replace=False))
    ref = search_regions(train.subset(chosen), searcher, batch_size, "regions: calibrating on train", progress,
                         exclude_of=chosen)
    return ref, {"method": "train-leave-one-out", "n_reference": n}


def as_matches(found: RegionMatches, rows: np.ndarray | None = None):
    """The per-image figures (of ``rows``, default all) as a copy-search ``Matches`` (one
    "variant", the tile), for calibration."""
    from ganaudit.search.copy_search import Matches

    rows = slice(None) if rows is None else rows
    return Matches(score=found.score[rows].astype(np.float64), distance=found.distance[rows],
                   similarity=found.similarity[rows], train_index=found.train_index[rows],
                   augmentation=np.zeros(len(found.score[rows]), np.int16), names=["tile"])


def matched_boxes(found: RegionMatches, i: int, train_tiles: TrainTiles, threshold: float
                  ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The region of sample ``i`` that matched, and where it came from: ``(sample box, train box)``,
    each ``(x, y, w, h)`` in pixels of its own image.

    The boxes are the union of the best tile and every other query tile of the sample that
    scores below ``threshold`` against the same training image at the same displacement
    (within one query stride), and of the training tiles they matched.
    """
    qgrid, tgrid = found.grid, train_tiles.grid
    scores, rows = found.tile_score[i], found.tile_match[i]
    best = int(np.argmin(scores))
    best_row = int(rows[best])
    image = train_tiles.image[best_row]
    scale = np.array(tgrid.size, float) / np.array(qgrid.size, float)  # training px per sample px

    shifts = found.tile_shift[i].astype(np.int64)

    def corner(q: int) -> np.ndarray:  # (y, x) of query tile q as searched (refined ones moved)
        return qgrid.positions[q] + shifts[q]

    def shift(q: int, row: int) -> np.ndarray:
        return tgrid.positions[train_tiles.tile[row]] - corner(q) * scale

    def qbox(q: int) -> tuple[int, int, int, int]:
        y, x = corner(q)
        return int(x), int(y), qgrid.tile[1], qgrid.tile[0]

    step = np.array(qgrid.size, float) * QUERY_STRIDE_FRACTION * scale
    same = [q for q in np.flatnonzero((scores < threshold) & (rows >= 0))
            if train_tiles.image[rows[q]] == image and (np.abs(shift(q, rows[q]) - shift(best, best_row)) <= step).all()]
    members = sorted(set(same) | {best})
    return (_union([qbox(q) for q in members]),
            _union([tgrid.box(int(train_tiles.tile[rows[q]])) for q in members]))


def _union(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0
