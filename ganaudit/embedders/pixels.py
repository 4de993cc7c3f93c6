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

On the shipped leaky fixture this catches every planted JPEG-q70 and ×1.15-brightness
copy, where raw pixels catch 0 of 40 and 25 of 39 (tests/test_fixtures_e2e.py). Pixels are
not aligned by the descriptor: shifted and cropped copies are re-aligned by its default
test-time augmentations (1-pixel shift grid and zoom, see ``ganaudit.augment``).
"""
from __future__ import annotations

import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec

PIXELS_SIZE = (32, 32)
COPY_BLUR_SIGMA = 2.5
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
    dim=3 * PIXELS_SIZE[0] * PIXELS_SIZE[1],
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
    def __init__(self, spec: EmbedderSpec, device: torch.device):
        super().__init__(spec, device)
        self._rows = blur_matrix(spec.input_size[0], COPY_BLUR_SIGMA).to(self.device)
        self._cols = blur_matrix(spec.input_size[1], COPY_BLUR_SIGMA).T.contiguous().to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = self._rows @ x.contiguous() @ self._cols  # the separable blur as two small products
        centred = blurred - blurred.mean(dim=(2, 3), keepdim=True)
        return centred.flatten(1)  # unit norm is applied after forward (spec.l2_normalized)


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
