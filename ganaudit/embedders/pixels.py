"""The ``pixels`` embedder: resized raw pixels, no weights.

Useful when no pretrained network is at hand and for exact or near-exact copies; its
distances know nothing of semantics, so mode assignment relies on labels being given.
"""
from __future__ import annotations

import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec

PIXELS_SIZE = (32, 32)
SPEC = EmbedderSpec(
    name="pixels",
    dim=3 * PIXELS_SIZE[0] * PIXELS_SIZE[1],
    input_size=PIXELS_SIZE,
    metric="l2",
    weights="none",
)


class PixelsEmbedder(Embedder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last memory is fine here: flatten in logical (C, H, W) order.
        return x.contiguous().flatten(1)


def create(device: torch.device, weights=None) -> PixelsEmbedder:
    return PixelsEmbedder(SPEC, device)
