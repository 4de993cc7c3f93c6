"""Sources: the images an audit reads — training, holdout and generated — as one protocol.

:class:`ImageSource` is what every stage after loading relies on. Three kinds implement it:

- :class:`~ganaudit.sources.datasets.ImageSet` (and its :meth:`subset`): image folders and
  ``.npz``/``.npy`` arrays on disk (``datasets.py``, ``arrays.py``);
- :class:`~ganaudit.sources.samples.GeneratorSamples`: samples drawn from a generator
  checkpoint loaded by ``generators.py`` (``state_dicts.py``, ``signatures.py``), sample
  ``i`` of seed ``s`` from latent seed ``[s, i]``;
- :class:`~ganaudit.sources.samples.SampleFiles`: samples made elsewhere and read from disk.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch


class ImageSource(Protocol):
    """A finite, indexable set of images, streamed in batches."""

    def __len__(self) -> int:
        """How many images."""

    def batches(self, batch_size: int) -> Iterator[tuple["np.ndarray", "torch.Tensor"]]:
        """Yield ``(indices (B,) int64, images (B, 3, H, W) float32 in [0, 1])`` over the set.

        An unreadable image skipped with ``--skip-corrupt`` is missing from its batch's indices.
        """

    def load(self, index: int) -> "torch.Tensor":
        """Image ``index`` again, ``(3, H, W)`` float32 in [0, 1] on the CPU (for the report)."""

    def describe(self, index: int) -> dict[str, Any]:
        """The JSON fields that name image ``index``: ``{"path": ...}`` for a file (relative to
        the set's location, or ``name[i]`` for an array row), ``{"seed": [s, i]}`` for a
        generated sample."""

    def class_labels(self, indices: "np.ndarray") -> "np.ndarray | None":
        """``(B,)`` int64 class of each image (class folders, conditional generators), or None."""
