"""Embedding survives out-of-memory by splitting the batch (what a GPU user hits first)."""
from __future__ import annotations

import numpy as np
import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec


class _SmallMemoryEmbedder(Embedder):
    """Fails like CUDA does on batches above 3 images; otherwise the mean colour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x.mean(dim=(2, 3))


def test_embed_splits_a_batch_that_does_not_fit():
    spec = EmbedderSpec(name="small", dim=3, input_size=(8, 8))
    embedder = _SmallMemoryEmbedder(spec, torch.device("cpu"))
    images = torch.rand(10, 3, 8, 8)
    feats = embedder.embed(images)
    assert feats.shape == (10, 3)
    np.testing.assert_allclose(feats, images.mean(dim=(2, 3)).numpy(), rtol=1e-5)
    assert embedder.embed(images[:5]).shape == (5, 3)  # the learnt limit is kept
