"""Float32 distance tiles whose comparisons come out exactly as prdc's float64 ones.

:mod:`ganaudit.metrics.coverage` computes PRDC with the definitions and the rounding of the
``prdc`` package (scikit-learn's float64 distances, rounded to float32), but from float32
GEMM tiles: twice the speed of float64 here, and never an N×M matrix. This module is that
machinery:

* :func:`kth_neighbour_distances` — the k-NN radii. The self-distance matrix is walked over
  its upper triangle, so each pair is computed once and updates both points' candidate
  lists; the candidates near the k-th are recomputed in float64;
* :func:`in_ball_counts` — for each real×fake tile, which pairs lie inside which balls;
  only the pairs whose float32 value the error bound cannot decide are recomputed.

The error bound, and why it makes every outcome the reference's, is the comment below.
"""
from __future__ import annotations

import numpy as np

# Extra neighbours kept per point by the float32 self-search, beyond the k needed: the exact
# recomputation picks the k-th among them, and the error bound then proves that no other
# point can be nearer (the few points where it cannot are searched again, see
# kth_neighbour_distances).
_RADIUS_EXTRA_CANDIDATES = 6
# Pairs recomputed in float64 per chunk: a few MB, so the buffers are reused rather than
# mapped afresh (page faults cost more than the arithmetic here).
_RECOMPUTE_ELEMENTS = 2**19
# Tile side of the float64 reference computation (the tiles of the float64 implementation this
# module replaced, which reproduced prdc bit for bit); used only where the float64
# recomputation of a pair cannot tell its summation order from scikit-learn's.
_REFERENCE_TILE = 2048

# ---------------------------------------------------------------------------------------------
# Float32 distances with a rigorous error bound
#
# Every distance is first computed as one float32 GEMM per tile. With a power-of-two scale s
# (1 unless the squared norms leave [2⁻⁶⁰, 2⁶⁰]), n_x the float64 squared norm of row x (as
# scikit-learn computes it), ñ_x = s²·n_x and n̂_x = fl32(ñ_x), the operands
#     a_x = (-2s·x, n̂_x, 1, 0, ...),  b_y = (s·y, 1, n̂_y, 0, ...)      (K columns, K ≥ D+2)
# are exact float32 (power-of-two scaling), and ŝ = fl32(a_x·b_y) estimates s²·|x - y|².
# Write ν for exact squared norms, u = 2⁻²⁴ and u₆₄ = 2⁻⁵³ for the unit roundoffs and
# γ_n(u) = n·u / (1 - n·u). Then, for ŝ against the float64 squared distance d₆₄ the
# reference computes (scikit-learn's fl(fl(-2·x·y + n_x) + n_y), or Σ(x - y)² in float64 for
# the radii):
#   1. the GEMM, in any summation order, blocked or not, with or without FMA (Higham,
#      "Accuracy and Stability of Numerical Algorithms", eq. 3.5):
#      |ŝ - Σ a_k b_k| ≤ γ_K(u)·Σ|a_k b_k|, and Σ|a_k b_k| = 2s²Σ|x_k y_k| + n̂_x + n̂_y
#      ≤ s²(ν_x + ν_y) + n̂_x + n̂_y ≤ 2(1 + u)(1 + γ_D(u₆₄))·(ñ_x + ñ_y);
#   2. Σ a_k b_k = s²|x - y|² + (n̂_x - s²ν_x) + (n̂_y - s²ν_y), each norm term at most
#      (u + 2γ_D(u₆₄))·ñ (float32 rounding of ñ, float64 error of n);
#   3. the reference's own float64 error: |d₆₄ - |x - y|²| ≤ (2γ_D(u₆₄) + 4u₆₄)·(ν_x + ν_y);
#   4. underflow (products or scaled entries below float32's normal range) adds at most
#      K·2⁻¹¹⁸ < 2⁻⁸⁰ for K < 2³⁸ (|s·x_k| ≤ 2³⁰ after scaling).
# So |ŝ - s²·d₆₄| ≤ c·(ñ_x + ñ_y) + η with c = 1.01·(2γ_K(u) + u + 5γ_D(u₆₄)) + 32u₆₄ (the
# 1.01 and 32u₆₄ absorb the second-order terms and the float64 evaluation of the bounds
# themselves) and η = 2⁻⁸⁰. For D = 2048 that is c ≈ 2.5e-4: |ŝ - s²d₆₄| ≲ 1 for standard
# normal features, whose squared distances are about 4096.
#
# prdc compares φ(d₆₄) < r, with φ(v) = fl32(√fl32(max(v, 0))) (scikit-learn rounds the
# squared distance to float32 and takes the root in float32) and r a float32 radius. φ is
# monotone, and with δ = 2⁻²⁰ (≥ 16u):
#   * d₆₄ ≥ r²(1 + δ) + 2⁻¹⁴⁰ ⇒ fl32(d₆₄) ≥ r² (relative rounding ≤ u, or absolute ≤ 2⁻¹⁵⁰
#     below the normal range) ⇒ √ ≥ r ⇒ φ(d₆₄) ≥ r, as r is a float32 number: outcome False;
#   * d₆₄ ≤ r²(1 - δ) with r ≥ 2⁻⁶⁰ ⇒ √fl32(d₆₄) ≤ r(1 - 2⁻²³), below the midpoint between r
#     and its float32 predecessor ⇒ φ(d₆₄) < r: outcome True.
# A pair is recomputed in float64 only when ŝ lies in between, widened by the bound above;
# every other pair's outcome is the reference's.
_U32 = 2.0**-24
_U64 = 2.0**-53
_MARGIN = 2.0**-20  # δ
_TINY_SQ = 2.0**-140  # absolute part of the "surely outside" margin (float32 subnormals)
_SURE_INSIDE_MIN_RADIUS = 2.0**-60
_UNDERFLOW = 2.0**-80  # η
# fl32(v) is infinite from this float64 value on (round to nearest): the squared distance an
# infinite radius stands for, since φ(d) < inf only while fl32(d) is finite.
_F32_OVERFLOW_SQ = 2.0**128 - 2.0**103
# Test hooks: multiply the float32 error bound and the float64 summation-order bound. Values
# above 1 only send more pairs to the exact paths (same results, slower); the tests set them
# huge to run every pair through those paths.
_ERROR_BOUND_SCALE = 1.0
_ORDER_BOUND_SCALE = 1.0


def _gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


class _Operands:
    """The float32 GEMM operands of one feature set (see the comment above) and their bound."""

    def __init__(self, sq: np.ndarray, dim: int, scale: float):
        self.sq = sq  # float64 squared norms, as scikit-learn computes them
        self.dim = dim
        self.k = -(-(dim + 2) // 16) * 16  # a multiple of 16 columns: aligned GEMM panels
        self.scale = scale
        self.scaled_sq = sq * (scale * scale)  # ñ, exact (power-of-two scale)
        self.scaled_sq32 = self.scaled_sq.astype(np.float32)  # n̂
        self.coef = _ERROR_BOUND_SCALE * (
            1.01 * (2.0 * _gamma(self.k, _U32) + _U32 + 5.0 * _gamma(dim + 2, _U64)) + 32 * _U64
        )

    def left(self, x: np.ndarray, rows, buf: np.ndarray | None = None) -> np.ndarray:
        """``(-2s·x, n̂, 1, 0...)`` for ``x[rows]``, written into ``buf`` (zero-padded) if given."""
        block = x[rows]
        if buf is None:
            buf = np.zeros((block.shape[0], self.k), dtype=np.float32)
        out = buf[: block.shape[0]]
        np.multiply(block, np.float32(-2.0 * self.scale), out=out[:, : self.dim])
        out[:, self.dim] = self.scaled_sq32[rows]
        out[:, self.dim + 1] = 1.0
        return out

    def right(self, x: np.ndarray) -> np.ndarray:
        """``(s·y, 1, n̂, 0...)`` for all rows of ``x``."""
        out = np.zeros((x.shape[0], self.k), dtype=np.float32)
        for start in range(0, x.shape[0], 8192):
            rows = slice(start, start + 8192)
            if self.scale == 1.0:
                out[rows, : self.dim] = x[rows]
            else:
                np.multiply(x[rows], np.float32(self.scale), out=out[rows, : self.dim])
        out[:, self.dim] = 1.0
        out[:, self.dim + 1] = self.scaled_sq32
        return out

    def diagonal(self, x: np.ndarray, a: int, b: int, out: np.ndarray) -> np.ndarray:
        """ŝ among rows ``a:b`` as ``fl32(fl32(-2·(s·x)(s·x)ᵀ + n̂_i) + n̂_j)``.

        ``X Xᵀ`` of one buffer is a symmetric rank-k update in BLAS (half a GEMM's work). The
        error is within the same bound: the D-term products are within γ_D of exact and the two
        float32 additions add at most 2u·2(ñ_i + ñ_j) ≤ (2γ_K - 2γ_D)(ñ_i + ñ_j), K ≥ D + 16.
        """
        block = x[a:b] if self.scale == 1.0 else x[a:b] * np.float32(self.scale)
        t = np.matmul(block, block.T, out=out)
        t *= np.float32(-2.0)
        t += self.scaled_sq32[a:b, None]
        t += self.scaled_sq32[None, a:b]
        return t


def _common_scale(*sqs: np.ndarray) -> float:
    """A power of two s that brings the largest squared norm into [1/4, 1] when it is outside
    [2⁻⁶⁰, 2⁶⁰] (so float32 neither overflows nor loses everything to underflow), else 1."""
    top = max(float(sq.max()) for sq in sqs)
    if top == 0.0 or 2.0**-60 <= top <= 2.0**60:
        return 1.0
    return 2.0 ** -int(np.ceil(np.log2(top) / 2))


def _round_up_f32(x: np.ndarray) -> np.ndarray:
    """float64 → float32, never rounding down (so ``v < out`` keeps every ``v < x``)."""
    out = x.astype(np.float32)
    low = out.astype(np.float64) < x
    out[low] = np.nextafter(out[low], np.float32(np.inf))
    return out


def _outer_bounds(radii: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per radius r: the scaled squared distance at or above which ``φ(d) < r`` is surely
    False, and the one below which it is surely True (-inf where none is safe)."""
    r2 = np.where(np.isposinf(radii), _F32_OVERFLOW_SQ, radii.astype(np.float64) ** 2)
    s2 = scale * scale
    with np.errstate(invalid="ignore"):
        hi = (r2 * (1.0 + _MARGIN) + _TINY_SQ) * s2
        lo = np.where(radii >= _SURE_INSIDE_MIN_RADIUS, r2 * (1.0 - _MARGIN) * s2, -np.inf)
    # r <= 0 or NaN: the comparison is False whatever the distance.
    never = ~(radii > 0)
    hi[never], lo[never] = -np.inf, -np.inf
    return hi, lo


def _phi(sq: np.ndarray) -> np.ndarray:
    """scikit-learn's float64 squared distance → float32 distance."""
    return np.sqrt(np.maximum(sq, 0.0).astype(np.float32))


def _exact_distances_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distances, computed in float64 and rounded like scikit-learn.

    scikit-learn (and hence prdc) rounds the float64 squared distance to float32 and takes
    the square root in float32; doing the same makes equal inputs give equal bits.
    """
    diff = np.subtract(a, b, dtype=np.float64)  # exact inputs, one rounding: as astype then -
    sq = np.einsum("...d,...d->...", diff, diff)
    return np.sqrt(sq.astype(np.float32))


def _pair_distances(x: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``_exact_distances_f32`` of the row pairs ``(x[p], x[q])``, in bounded chunks."""
    out = np.empty(p.shape[0], dtype=np.float32)
    step = max(1, _RECOMPUTE_ELEMENTS // x.shape[1])
    for s in range(0, p.shape[0], step):
        out[s : s + step] = _exact_distances_f32(x[p[s : s + step]], x[q[s : s + step]])
    return out


def _merge_candidates(best_val, best_idx, thr, p, q, v) -> None:
    """Merge new (point ``p``, neighbour ``q``, value ``v``) triples into each point's list of
    its ``n`` smallest values (``best_val``/``best_idx`` rows), and update ``thr`` (the
    ``n``-th value)."""
    if p.size == 0:
        return
    n = best_val.shape[1]
    points, inv = np.unique(p, return_inverse=True)
    m = points.shape[0]
    keys = np.concatenate([np.repeat(np.arange(m), n), inv])
    vals = np.concatenate([best_val[points].ravel(), v])
    ids = np.concatenate([best_idx[points].ravel(), q])
    order = np.lexsort((vals, keys))
    counts = np.bincount(keys, minlength=m)  # each point has >= n entries (its old list)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = order[(starts[:, None] + np.arange(n)).ravel()]
    best_val[points] = vals[take].reshape(m, n)
    best_idx[points] = ids[take].reshape(m, n)
    thr[points] = best_val[points, -1]


def _balanced_blocks(n: int, tile: int) -> list[tuple[int, int]]:
    count = -(-n // max(1, tile))
    size = -(-n // count)
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def _self_candidates(x: np.ndarray, ops: _Operands, n_cand: int, tile: int):
    """Each row's ``n_cand`` smallest ŝ to other rows: ``(indices, values)``, ``(N, n_cand)``.

    Every pair is computed once: the diagonal tiles seed each row's list, then each
    upper-triangle tile updates the lists of its rows and of its columns. Only entries below
    a list's current ``n_cand``-th value are merged, which after the seeding is a few per row.
    Every pair not in a row's final list has ŝ at or above its last value.
    """
    n = x.shape[0]
    best_val = np.full((n, n_cand), np.inf, dtype=np.float32)
    best_idx = np.full((n, n_cand), -1, dtype=np.int64)
    thr = best_val[:, -1].copy()
    right = ops.right(x)
    blocks = _balanced_blocks(n, tile)
    size = blocks[0][1] - blocks[0][0]
    buf = np.empty(size * size, dtype=np.float32)
    scratch = np.empty(size * size, dtype=np.float32)
    for a, b in blocks:  # diagonal tiles
        w = b - a
        t = ops.diagonal(x, a, b, buf[: w * w].reshape(w, w))
        np.fill_diagonal(t, np.inf)
        if w - 1 >= n_cand:  # the entries up to each row's n_cand-th smallest
            part = scratch[: w * w].reshape(w, w)
            np.copyto(part, t)
            part.partition(n_cand - 1, axis=1)
            f = np.flatnonzero(t <= part[:, n_cand - 1, None])
            p, q = np.divmod(f, w)
            v = t.ravel()[f]
        else:  # a block smaller than the list: all its other rows
            p, q = np.nonzero(~np.eye(w, dtype=bool))
            v = t[p, q]
        _merge_candidates(best_val, best_idx, thr, p + a, q + a, v)
    del scratch
    left_buf = np.zeros((size, ops.k), dtype=np.float32)
    for bi, (a, b) in enumerate(blocks[:-1]):
        left = ops.left(x, slice(a, b), left_buf)
        for c, e in blocks[bi + 1 :]:
            t = np.matmul(left, right[c:e].T, out=buf[: (b - a) * (e - c)].reshape(b - a, e - c))
            flat = t.ravel()
            f = np.flatnonzero(t < thr[a:b, None])
            if f.size:
                r, q = np.divmod(f, e - c)
                _merge_candidates(best_val, best_idx, thr, r + a, q + c, flat[f])
            f = np.flatnonzero(t < thr[None, c:e])
            if f.size:
                r, q = np.divmod(f, e - c)
                _merge_candidates(best_val, best_idx, thr, q + c, r + a, flat[f])
    return best_idx, best_val


def _kth_per_row(rows: np.ndarray, dist: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """Per row id ``0..R-1``, the ``kth[row]``-th smallest (1-based) of its ``dist`` entries."""
    order = np.lexsort((dist, rows))
    starts = np.searchsorted(rows[order], np.arange(kth.shape[0]))
    return dist[order[starts + kth - 1]]


def _radii_full_search(x, ops, points, kth_upper, nearest_k, tile) -> np.ndarray:
    """Radii of ``points`` from every other row whose lower bound is at most ``kth_upper``
    (a bound on the k-th distance): a set that holds every row nearer than the k-th."""
    limit = _round_up_f32(kth_upper + ops.coef * (ops.scaled_sq[points] + ops.scaled_sq.max()) + _UNDERFLOW)
    right = ops.right(x)
    pos, found = [], []
    for a in range(0, points.size, tile):
        chunk = points[a : a + tile]
        left = ops.left(x, chunk)
        for c in range(0, x.shape[0], tile):
            t = left @ right[c : c + tile].T
            r, q = np.nonzero(t <= limit[a : a + tile, None])
            keep = q + c != chunk[r]
            pos.append(r[keep] + a)
            found.append(q[keep] + c)
    pos, found = np.concatenate(pos), np.concatenate(found)
    dist = _pair_distances(x, points[pos], found)
    return _kth_per_row(pos, dist, np.full(points.size, nearest_k))


def _squared_norms(x: np.ndarray, block_size: int) -> np.ndarray:
    """Row norms squared in float64, one row block at a time (no full float64 copy of ``x``).

    The same per-row ``einsum`` as scikit-learn's ``row_norms``, so the same bits.
    """
    out = np.empty(x.shape[0], dtype=np.float64)
    step = max(1, min(block_size, 2**22 // max(1, x.shape[1])))
    for start in range(0, x.shape[0], step):
        block = x[start : start + step].astype(np.float64)
        out[start : start + step] = np.einsum("ij,ij->i", block, block)
    return out


def _sklearn_sq_distances(real, fake, real_sq, fake_sq, i, j) -> np.ndarray:
    """scikit-learn's float64 ``(-2·x·y + |x|²) + |y|²`` for the pairs ``(real[i], fake[j])``.

    The dot product is summed in another order than scikit-learn's BLAS GEMM, so the result
    can differ from its bits by at most ``_order_slack`` (see ``_decide``).
    """
    out = np.empty(i.shape[0], dtype=np.float64)
    step = max(1, _RECOMPUTE_ELEMENTS // real.shape[1])
    for s in range(0, i.shape[0], step):
        ii, jj = i[s : s + step], j[s : s + step]
        dot = np.einsum("ij,ij->i", real[ii].astype(np.float64), fake[jj].astype(np.float64))
        d = dot * -2.0
        d += real_sq[ii]
        d += fake_sq[jj]
        out[s : s + step] = d
    return out


def _reference_distances(real, fake, real_sq, fake_sq, i, j) -> np.ndarray:
    """The float32 distances of pairs ``(i, j)`` exactly as the float64 tile implementation
    computed them (BLAS GEMM over ``_REFERENCE_TILE`` tiles, which reproduced prdc's bits)."""
    out = np.empty(i.shape[0], dtype=np.float32)
    tiles = (i // _REFERENCE_TILE) * (-(-fake.shape[0] // _REFERENCE_TILE)) + j // _REFERENCE_TILE
    for tile in np.unique(tiles):
        sel = np.flatnonzero(tiles == tile)
        r0 = i[sel[0]] // _REFERENCE_TILE * _REFERENCE_TILE
        f0 = j[sel[0]] // _REFERENCE_TILE * _REFERENCE_TILE
        rs, fs = slice(r0, r0 + _REFERENCE_TILE), slice(f0, f0 + _REFERENCE_TILE)
        sq = real[rs].astype(np.float64) @ fake[fs].astype(np.float64).T
        sq *= -2.0
        sq += real_sq[rs, None]
        sq += fake_sq[None, fs]
        np.maximum(sq, 0.0, out=sq)
        out[sel] = np.sqrt(sq[i[sel] - r0, j[sel] - f0].astype(np.float32))
    return out


def _decide(sq, slack, radii, reference) -> np.ndarray:
    """``φ(d) < r`` for recomputed squared distances ``sq`` against float32 ``radii``.

    scikit-learn's own value (its BLAS sums the dot product in another order) lies within
    ``slack`` of ``sq``; φ is monotone, so where ``sq ± slack`` give the same outcome that is
    its outcome. Elsewhere (about one pair in 10⁸ near a float32 rounding boundary)
    ``reference(sel)`` recomputes the pairs ``sel`` with the reference tiles.
    """
    out = _phi(sq) < radii
    unsure = np.flatnonzero((_phi(sq - slack) < radii) != (_phi(sq + slack) < radii))
    if unsure.size:
        out[unsure] = reference(unsure) < radii[unsure]
    return out


def _cross_in_ball_pairs(real, fake, real_sq, fake_sq, real_radii, fake_radii, tile):
    """Per tile, ``(i, j)`` of the pairs with ``d(real_i, fake_j) < real_radii[i]`` and the
    rows ``i`` with some ``d(real_i, fake_j) < fake_radii[j]``, decided as prdc decides them.

    Radii that are NaN or ``<= 0`` hold no point (``-inf`` skips a radius altogether)."""
    n, m = real.shape[0], fake.shape[0]
    scale = _common_scale(real_sq, fake_sq)
    rops, fops = _Operands(real_sq, real.shape[1], scale), _Operands(fake_sq, real.shape[1], scale)
    coef = rops.coef
    r_hi, r_lo = _outer_bounds(real_radii, scale)
    f_hi, f_lo = _outer_bounds(fake_radii, scale)
    # Per-row / per-column candidate limits: the pair bound with the other set's largest norm.
    row_limit = _round_up_f32(r_hi + coef * (rops.scaled_sq + fops.scaled_sq.max()) + _UNDERFLOW)
    col_limit = _round_up_f32(f_hi + coef * (fops.scaled_sq + rops.scaled_sq.max()) + _UNDERFLOW)
    order_coef = _ORDER_BOUND_SCALE * (4.0 * _gamma(real.shape[1], _U64) + 16 * _U64)
    right = fops.right(fake)
    buf = np.empty(min(tile, n) * min(tile, m), dtype=np.float32)
    left_buf = np.zeros((min(tile, n), rops.k), dtype=np.float32)
    for r0 in range(0, n, tile):
        left = rops.left(real, slice(r0, r0 + tile), left_buf)
        h = left.shape[0]
        for f0 in range(0, m, tile):
            w = min(tile, m - f0)
            t = np.matmul(left, right[f0 : f0 + w].T, out=buf[: h * w].reshape(h, w))
            flat = t.ravel()
            found = []
            for limit, hi, lo, by_row in ((row_limit[r0 : r0 + h, None], r_hi, r_lo, True),
                                          (col_limit[None, f0 : f0 + w], f_hi, f_lo, False)):
                f = np.flatnonzero(t < limit)
                i, j = np.divmod(f, w)
                i += r0
                j += f0
                v = flat[f].astype(np.float64)
                slack = coef * (rops.scaled_sq[i] + fops.scaled_sq[j]) + _UNDERFLOW
                own = i if by_row else j
                sure = v + slack < lo[own]
                maybe = ~sure & (v - slack < hi[own])
                found.append((i, j, sure, maybe))
            yield _resolve(real, fake, real_sq, fake_sq, real_radii, fake_radii, order_coef, found)


def _resolve(real, fake, real_sq, fake_sq, real_radii, fake_radii, order_coef, found):
    """Recompute one tile's undecided pairs; return its in-real-ball pairs and recalled rows."""
    (i1, j1, sure1, maybe1), (i2, j2, sure2, maybe2) = found
    inside1, inside2 = sure1, sure2
    if maybe1.any() or maybe2.any():
        m = fake.shape[0]
        keys1, keys2 = i1[maybe1] * m + j1[maybe1], i2[maybe2] * m + j2[maybe2]
        keys = np.union1d(keys1, keys2)  # a pair undecided in both tests is recomputed once
        ki, kj = np.divmod(keys, m)
        sq = _sklearn_sq_distances(real, fake, real_sq, fake_sq, ki, kj)
        slack = order_coef * (real_sq[ki] + fake_sq[kj])
        decided = []
        for pair_keys, radii in ((keys1, real_radii[i1[maybe1]]), (keys2, fake_radii[j2[maybe2]])):
            pos = np.searchsorted(keys, pair_keys)

            def reference(sel, pos=pos):
                return _reference_distances(real, fake, real_sq, fake_sq, ki[pos[sel]], kj[pos[sel]])

            decided.append(_decide(sq[pos], slack[pos], radii, reference))
        inside1, inside2 = sure1.copy(), sure2.copy()
        inside1[np.flatnonzero(maybe1)[decided[0]]] = True
        inside2[np.flatnonzero(maybe2)[decided[1]]] = True
    return i1[inside1], j1[inside1], i2[inside2]


def kth_neighbour_distances(x: np.ndarray, k: int, tile: int) -> np.ndarray:
    """prdc's k-NN radius of every row: the k-th smallest distance to another row, float32.

    Candidates come from one float32 GEMM per upper-triangle tile (each pair computed once).
    The error bound then says which candidates can hold the k-th distance; only those are
    recomputed in float64 and rounded as scikit-learn does (:func:`_exact_distances_f32`),
    and the bound proves that no row outside the candidates can be nearer (rows where it
    cannot are searched again against every row).

    Args:
        x: ``(N, D)`` C-contiguous finite float32, ``N > k``.
        k: which neighbour, ``>= 1``.
        tile: tile side (memory about ``5·tile²`` bytes).

    Returns:
        ``(N,)`` float32.
    """
    n = x.shape[0]
    n_cand = min(k + _RADIUS_EXTRA_CANDIDATES, n - 1)
    sq = _squared_norms(x, tile)
    ops = _Operands(sq, x.shape[1], _common_scale(sq))
    idx, val = _self_candidates(x, ops, n_cand, tile)
    # Bounds on each candidate's scaled float64 squared distance: ŝ ∓ (c·(ñ_p + ñ_q) + η).
    slack = ops.coef * (ops.scaled_sq[:, None] + ops.scaled_sq[idx]) + _UNDERFLOW
    lower = val.astype(np.float64) - slack
    upper = val.astype(np.float64) + slack
    # The k-th distance V lies in [k-th lower bound, k-th upper bound]. Candidates whose upper
    # bound is below the k-th lower bound are surely below V (counted, not recomputed); those
    # whose lower bound is above the k-th upper bound surely above it (ignored); V is the
    # (k - below)-th smallest exact distance of the rest, usually the k-th candidate alone.
    kth_lower = np.partition(lower, k - 1, axis=1)[:, k - 1]
    kth_upper = np.partition(upper, k - 1, axis=1)[:, k - 1]
    below = upper < kth_lower[:, None]
    rows, cols = np.nonzero(~below & (lower <= kth_upper[:, None]))
    dist = _pair_distances(x, rows, idx[rows, cols])
    radii = _kth_per_row(rows, dist, k - below.sum(axis=1))
    if n_cand < n - 1:
        # A point q outside a row's list has ŝ >= the list's last value t, so its lower bound
        # is at least t - c·(ñ_p + max ñ) - η; above the k-th upper bound it cannot matter.
        outside = val[:, -1].astype(np.float64) - (
            ops.coef * (ops.scaled_sq + ops.scaled_sq.max()) + _UNDERFLOW
        )
        unproven = np.flatnonzero(~(outside > kth_upper))
        if unproven.size:
            radii[unproven] = _radii_full_search(x, ops, unproven, kth_upper[unproven], k, tile)
    return radii


def in_ball_counts(real: np.ndarray, fake: np.ndarray, real_radii: np.ndarray, fake_radii: np.ndarray,
                   tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Who lies in whose k-NN ball, decided as prdc decides it (``φ(d) < r``).

    Args:
        real, fake: ``(N, D)`` and ``(M, D)`` C-contiguous finite float32.
        real_radii, fake_radii: ``(N,)`` and ``(M,)`` float32 radii.
        tile: tile side (memory about ``5·tile²`` bytes).

    Returns:
        ``(covering_reals (M,) int64`` (how many real balls hold fake j), ``real_covered (N,)
        bool`` (some fake inside real i's ball), ``real_recalled (N,) bool`` (real i inside
        some fake ball)).
    """
    covering_reals = np.zeros(fake.shape[0], dtype=np.int64)  # reals whose ball holds fake j
    real_covered = np.zeros(real.shape[0], dtype=bool)  # some fake inside real i's ball
    real_recalled = np.zeros(real.shape[0], dtype=bool)  # real i inside some fake ball
    real_sq, fake_sq = _squared_norms(real, tile), _squared_norms(fake, tile)
    # An infinite radius holds every point whose float32 distance is finite. When no distance
    # can overflow float32 (d² ≤ 2(|x|² + |y|²)), count those balls here, outside the tiles.
    top = max(real_sq.max(), fake_sq.max())
    if 4.0 * top * (1.0 + 2.0**-20) < _F32_OVERFLOW_SQ * (1.0 - _MARGIN):
        infinite = np.isposinf(real_radii)
        if infinite.any():
            covering_reals += np.count_nonzero(infinite)
            real_covered |= infinite
            real_radii = np.where(infinite, np.float32(-np.inf), real_radii)
        if np.isposinf(fake_radii).any():
            real_recalled[:] = True
            fake_radii = np.full_like(fake_radii, -np.inf)  # nothing left to find
    per_tile = _cross_in_ball_pairs(real, fake, real_sq, fake_sq, real_radii, fake_radii, tile)
    for i_in, j_in, i_recalled in per_tile:
        covering_reals += np.bincount(j_in, minlength=fake.shape[0])
        real_covered[i_in] = True
        real_recalled[i_recalled] = True
    return covering_reals, real_covered, real_recalled
