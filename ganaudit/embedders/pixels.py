"""Weightless embedders on raw pixels: ``pixels`` and its copy descriptor ``pixels-copy``.

``pixels`` is the resized image itself; its distances know nothing of semantics, so mode
assignment relies on labels being given.

``pixels-copy`` is what copy search uses when the embedder is ``pixels`` (its
``copy_embedder``). A copy that was re-encoded, noised or brightened differs from its
source mostly in fine detail and in overall level, while an image that is merely similar
differs in layout; so the descriptor keeps the layout and drops the rest:

1. a Gaussian blur of ``COPY_BLUR_SIGMA`` pixels (of the 32×32 image), which removes JPEG
   blocking and chroma bleeding, noise and sub-pixel misalignment;
2. per-channel mean removal and unit L2 norm over the whole image, which removes a
   brightness or contrast change (up to clipping).

The blurred image carries almost nothing above a quarter of the sampling rate (the blur's
gain there is about 1e-3), so it is projected onto the blur's 16 leading singular vectors
per axis: 3 × 16 × 16 = 768 numbers instead of 3 × 32 × 32. The dropped components pass at
most 1.2e-3 of their input, so inner products stay those of the full 32 × 32 descriptor to
float32 precision (cosines within 2e-7 on the fixture's training images) and copy search is
4× cheaper.

On the shipped leaky fixture this catches every planted JPEG-q70 and ×1.15-brightness
copy, where raw pixels catch 0 of 40 and 25 of 39 (tests/test_fixtures_e2e.py). Pixels are
not aligned by the descriptor: shifted and cropped copies are re-aligned by its default
test-time augmentations (1-pixel shift grid and zoom, see ``ganaudit.search.augment``).
"""
from __future__ import annotations

import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec

PIXELS_SIZE = (32, 32)
COPY_BLUR_SIGMA = 2.5
COPY_BASIS = 16  # leading singular vectors of the blur kept per axis
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
    """``Uᵣᵀ (B X Bᵀ - mean) U_c`` per channel: the centred blurred image ``B X Bᵀ`` (``B`` the
    1-D blur of each axis) in the basis ``U`` of ``B``'s leading left singular vectors.

    The mean term is folded in too: the blurred image's mean is ``wᵀ X w / (H·W)`` with
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
