"""Weightless embedders on raw pixels: ``pixels`` and its copy descriptor ``pixels-copy``.

``pixels`` is the resized image itself; its distances know nothing of semantics, so mode
assignment relies on labels being given.

``pixels-copy`` is what copy search uses when the embedder is ``pixels`` (its
``copy_embedder``). A copy that was re-encoded, noised, brightened, recoloured or moved
differs from its source mostly in fine detail, overall level, colour and at its borders,
while an image that is merely similar differs in layout; so the descriptor keeps the layout
of the image's centre and drops the rest:

1. luminance alone (Rec. 601 weights): grey conversion and saturation changes keep it and
   a hue shift mostly does (on benchmarks/hard_edits.py, adding opponent-colour channels
   even at 0.3 of luminance's weight took grey copies from 1.00 to 0.28 caught, saturation
   from 0.95 to 0.55, at 32 px);
2. the centre ``COPY_CENTRE`` (0.8) of each side only, resized to 32 × 32, under a Gaussian
   window of ``COPY_WINDOW`` of that part's side, after removing its windowed mean: what
   a crop of up to 15%, a shift or a rotation of up to 10 degrees changes is the border.
   The source's centre 80% lies inside every shift of up to 3 px per 32 and every such
   rotation, and inside a crop of 85% of the side but for at most 5% of the side at one
   edge (window weight 0.36 or less there), so a re-aligned copy shows the descriptor
   (almost) only pixels of its source, not a strip that edges were extended into (on the
   64 px hard-edit set, with the centre 70%, shifted copies caught went from 0.67 to 0.97
   and crops from 0.53 to 0.77 with this alone; 70% cost the leaky fixture's noisy
   copies at 32 px, 25 of 34 caught instead of all, so 80% it is); an overall brightness
   change goes with the mean;
3. a Gaussian blur of ``COPY_BLUR_SIGMA`` pixels (of the 32×32 image), which removes JPEG
   blocking and chroma bleeding, noise and sub-pixel misalignment;
4. unit L2 norm over the whole image (applied after ``forward``), which removes a contrast
   change (up to clipping).

The blurred image carries almost nothing above a quarter of the sampling rate (the blur's
gain there is about 1e-3), so it is projected onto the blur's 16 leading singular vectors
per axis: 16 × 16 = 256 numbers instead of 32 × 32. The dropped components pass at
most 1.2e-3 of their input, so inner products stay those of the full 32 × 32 descriptor to
float32 precision.

Pixels are not aligned by the descriptor: shifted, cropped and rotated copies are re-aligned
by its default test-time augmentations (shift grid, zoom, rotations, crops; see
``ganaudit.search.augment``), the best of them refined against its training match
(``ganaudit.search.align``), calibrated per family (``ganaudit.search.calibration``).
benchmarks/hard_edits.py measures it on harder edits at 32, 64 and 128 px.
"""
from __future__ import annotations

import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec

PIXELS_SIZE = (32, 32)
COPY_BLUR_SIGMA = 2.5
COPY_BASIS = 16  # leading singular vectors of the blur kept per axis
COPY_WINDOW = 0.35  # the centre window's standard deviation, as a fraction of the kept centre's side
COPY_CENTRE = 0.8  # the centre part of each side the descriptor sees (see the module docstring)
LUMA = (0.299, 0.587, 0.114)
SPEC = EmbedderSpec(
    name="pixels",
    dim=3 * PIXELS_SIZE[0] * PIXELS_SIZE[1],
    input_size=PIXELS_SIZE,
    metric="l2",
    weights="none",
    copy_embedder="pixels-copy",
)
COPY_SPEC = EmbedderSpec(
    name="pixels-copy",
    dim=COPY_BASIS * COPY_BASIS,
    input_size=PIXELS_SIZE,
    l2_normalized=True,
    metric="ip",
    weights="none",
    copy_tta=("flip", "shift-grid", "zoom", "rotate", "crop", "hue", "refine"),
    region_embedder="pixels-tile",
    centre_crop=COPY_CENTRE,
)
# Region search's tile descriptor: the same blur and basis per colour channel, centred on the
# whole tile's mean, no window. A copied region can sit anywhere in a tile, so a window that
# weighs the centre would discount half of it (tests/test_regions.py: moved regions at 128 px
# were found at 0.76 with pixels-copy's windowed luminance, 0.88 with this).
TILE_SPEC = EmbedderSpec(
    name="pixels-tile",
    dim=3 * COPY_BASIS * COPY_BASIS,
    input_size=PIXELS_SIZE,
    l2_normalized=True,
    metric="ip",
    weights="none",
    copy_tta=("flip", "shift-grid", "zoom"),
)


class PixelsEmbedder(Embedder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last memory is fine here: flatten in logical (C, H, W) order.
        return x.contiguous().flatten(1)


class PixelsCopyEmbedder(Embedder):
    """``Uᵣᵀ B (w ⊙ (Y - m)) Bᵀ U_c`` of the luminance ``Y``: the centre-windowed image,
    centred on its windowed mean ``m``, blurred by ``B`` along each axis, in the basis ``U``
    of ``B``'s leading left singular vectors."""

    def __init__(self, spec: EmbedderSpec, device: torch.device):
        super().__init__(spec, device)
        (h, w), m = spec.input_size, COPY_BASIS
        (rows, _, _), (cols, _, _) = _projected_blur(h, m), _projected_blur(w, m)
        self._rows = rows.to(self.device)  # (m, H)
        self._cols = cols.T.contiguous().to(self.device)  # (W, m)
        self._window = centre_window(h, w).to(self.device)
        self._luma = torch.tensor(LUMA).view(1, 3, 1, 1).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * self._luma).sum(dim=1, keepdim=True)
        window = self._window
        x = (x - (x * window).sum(dim=(2, 3), keepdim=True) / window.sum()) * window
        projected = self._rows @ x @ self._cols  # (B, 1, m, m): two small products
        return projected.flatten(1)  # unit norm is applied after forward (spec.l2_normalized)


class PixelsTileEmbedder(Embedder):
    """``Uᵣᵀ (B X Bᵀ - mean) U_c`` per channel: the centred blurred image ``B X Bᵀ`` (``B`` the
    1-D blur of each axis) in the basis ``U`` of ``B``'s leading left singular vectors.

    The mean term is folded in: the blurred image's mean is ``wᵀ X w / (H·W)`` with
    ``w = Bᵀ1`` (``B``'s column sums), and its constant image ``11ᵀ`` becomes ``a aᵀ`` with
    ``a = Uᵀ1``, so no full-size blurred image is ever formed.
    """

    def __init__(self, spec: EmbedderSpec, device: torch.device):
        super().__init__(spec, device)
        (h, w), m = spec.input_size, COPY_BASIS
        (rows, w_rows, a_rows), (cols, w_cols, a_cols) = _projected_blur(h, m), _projected_blur(w, m)
        self._rows = rows.to(self.device)  # (m, H)
        self._cols = cols.T.contiguous().to(self.device)  # (W, m)
        self._mean_rows, self._mean_cols = (w_rows / h).to(self.device), (w_cols / w).to(self.device)
        self._constant = torch.outer(a_rows, a_cols).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Removing the image's own mean first changes nothing (the blur maps a constant image
        # to itself and the centring removes it) but keeps float32 cancellation small.
        x = x - x.mean(dim=(2, 3), keepdim=True)
        projected = self._rows @ x @ self._cols  # (B, C, m, m): two small products per channel
        mean = torch.einsum("h,bchw,w->bc", self._mean_rows, x, self._mean_cols)
        centred = projected - mean[:, :, None, None] * self._constant
        return centred.flatten(1)  # unit norm is applied after forward (spec.l2_normalized)


def centre_window(h: int, w: int) -> torch.Tensor:
    """``(H, W)`` float32 Gaussian window about the centre, standard deviation ``COPY_WINDOW`` of each side."""
    def axis(n: int) -> torch.Tensor:
        t = (torch.arange(n, dtype=torch.float64) + 0.5) / n - 0.5
        return torch.exp(-(t**2) / (2 * COPY_WINDOW**2))

    return torch.outer(axis(h), axis(w)).float()


def _projected_blur(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For an axis of ``n`` pixels: ``(Uᵀ B (m, n), w = Bᵀ1 (n,), a = Uᵀ1 (m,))``, float32.

    ``U`` holds the ``m`` leading left singular vectors of the blur ``B``, computed in float64
    with signs fixed by :func:`fix_signs`, so the basis, and hence the features (cached
    ones included), do not depend on the LAPACK build.
    """
    blur = blur_matrix(n, COPY_BLUR_SIGMA).double()
    u = fix_signs(torch.linalg.svd(blur)[0][:, :m])
    return (u.T @ blur).float(), blur.sum(dim=0).float(), u.sum(dim=0).float()


def fix_signs(u: torch.Tensor) -> torch.Tensor:
    """Each column of ``u`` (``(n, m)``) times ±1 so that its product with ``(1..n)^1.5`` is
    positive.

    A singular vector is defined up to its sign, and LAPACK builds pick differently. The
    blur is mirror-symmetric, so "largest entry positive" would tie between mirror entries
    of an antisymmetric vector; this weight has no symmetry, and its products with the
    basis vectors of a 32-pixel axis are at least 0.006 in size, far above rounding.
    """
    weight = torch.arange(1, u.shape[0] + 1, dtype=u.dtype) ** 1.5
    return u * torch.where(weight @ u < 0, -1.0, 1.0).to(u.dtype)


def gaussian_taps(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps over ±3σ (rounded), float64."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(t**2) / (2 * sigma**2))
    return taps / taps.sum()


def blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """``(n, n)`` float32 matrix of a 1-D Gaussian blur with replicated edges.

    Row i holds the taps centred on i; a tap that falls outside ``[0, n)`` lands on the
    nearest edge pixel (replicate padding), so every row sums to 1.
    """
    taps = gaussian_taps(sigma)
    radius = taps.numel() // 2
    matrix = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for offset, weight in zip(range(-radius, radius + 1), taps):
            matrix[i, min(max(i + offset, 0), n - 1)] += weight
    return matrix.float()


def create(device: torch.device, weights=None) -> PixelsEmbedder:
    return PixelsEmbedder(SPEC, device)


def create_copy(device: torch.device, weights=None) -> PixelsCopyEmbedder:
    return PixelsCopyEmbedder(COPY_SPEC, device)


def create_tile(device: torch.device, weights=None) -> PixelsTileEmbedder:
    return PixelsTileEmbedder(TILE_SPEC, device)
