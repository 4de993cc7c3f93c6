"""The images under audit: drawn from a generator, or read from a folder/array of samples.

Both are image sources (:class:`ganaudit.sources.ImageSource`): they give batches of
``(sample indices, images)`` and can produce any single sample again
(the report re-generates the few it shows instead of keeping images during the run).
"""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch

from ganaudit.device import OomSplitter
from ganaudit.sources.datasets import ImageSet
from ganaudit.sources.generators import Generator

log = logging.getLogger(__name__)


class GeneratorSamples:
    """``num_samples`` samples of a generator, sample ``i`` from latent seed ``[seed, i]``."""

    kind = "generator"

    def __init__(self, generator: Generator, num_samples: int, seed: int):
        self.generator = generator
        self.num_samples = num_samples
        self.seed = seed
        self._splitter = OomSplitter(generator.device, "sampling")

    def __len__(self) -> int:
        return self.num_samples

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(indices, images)``; on out of memory a batch is generated in smaller chunks."""
        for start in range(0, self.num_samples, batch_size):
            indices = np.arange(start, min(start + batch_size, self.num_samples))
            yield indices, self.images(indices)

    def images(self, indices: np.ndarray) -> torch.Tensor:
        """Samples ``indices`` (each from latent seed ``[seed, i]``, whichever process draws it),
        in smaller chunks on out of memory."""
        return self._splitter(self._sample, np.asarray(indices, dtype=np.int64))

    def _sample(self, indices: np.ndarray) -> torch.Tensor:
        return self.generator.sample(indices, self.seed)

    def class_labels(self, indices: np.ndarray) -> np.ndarray | None:
        """``(B,)`` int64 class label of each sample (conditional generators), else None."""
        if self.generator.num_classes is None:
            return None
        return self.generator.class_labels(np.asarray(indices), self.seed).numpy()

    def load(self, index: int) -> torch.Tensor:
        """Sample ``index`` again: ``(3, H, W)`` in [0, 1] on the CPU."""
        return self.generator.sample(np.array([index]), self.seed)[0].cpu()

    def describe(self, index: int) -> dict:
        return {"seed": [self.seed, int(index)]}


class SampleFiles:
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
        return self.images.describe(index)

    def class_labels(self, indices: np.ndarray) -> np.ndarray | None:
        """``(B,)`` int64 class label of each sample (a sample folder with class subfolders), else None."""
        return None if self.images.labels is None else self.images.labels[np.asarray(indices)]

