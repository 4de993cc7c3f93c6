"""The images under audit: drawn from a generator, or read from a folder/array of samples.

Both give batches of ``(sample indices, images)`` and can produce any single sample again
(the report re-generates the few it shows instead of keeping images during the run).
"""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch

from ganaudit.sources.datasets import ImageSet
from ganaudit.sources.generators import Generator

log = logging.getLogger(__name__)


class GeneratorSource:
    """``num_samples`` samples of a generator, sample ``i`` from latent seed ``[seed, i]``."""

    kind = "generator"

    def __init__(self, generator: Generator, num_samples: int, seed: int):
        self.generator = generator
        self.num_samples = num_samples
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(indices, images)``; on out-of-memory the batch size halves and retries."""
        start = 0
        while start < self.num_samples:
            indices = np.arange(start, min(start + batch_size, self.num_samples))
            try:
                images = self.generator.sample(indices, self.seed)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                log.warning("out of memory while sampling; retrying with batch size %d", batch_size)
                _empty_cache(self.generator.device)
                continue
            yield indices, images
            start += len(indices)

    def load(self, index: int) -> torch.Tensor:
        """Sample ``index`` again: ``(3, H, W)`` in [0, 1] on the CPU."""
        return self.generator.sample(np.array([index]), self.seed)[0].cpu()

    def describe(self, index: int) -> dict:
        return {"seed": [self.seed, int(index)]}


class SampleSetSource:
    """Pre-generated samples read from disk (any model, diffusion included)."""

    kind = "samples"

    def __init__(self, images: ImageSet):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        yield from self.images.batches(batch_size)

    def load(self, index: int) -> torch.Tensor:
        return self.images.load(index)

    def describe(self, index: int) -> dict:
        return {"sample_path": self.images.describe(index)}


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
