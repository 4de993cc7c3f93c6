"""What every embedder declares, and the batched embedding loop they share."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class EmbedderSpec:
    """Preprocessing and search facts of an embedder, kept as data beside its weights.

    Attributes:
        name: registry name.
        dim: output feature dimension D.
        input_size: ``(H, W)`` the network takes; images are resized to it on the device
            with antialiased bicubic interpolation.
        mean, std: per-channel normalisation applied after resizing (inputs in [0, 1]).
        l2_normalized: features are unit vectors.
        metric: the FAISS metric to search with, ``"l2"`` or ``"ip"``.
        copy_threshold: a published absolute copy threshold in the metric's units, or None.
        weights: where the weights come from, in words (``"none"`` for weightless ones).
    """

    name: str
    dim: int
    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    l2_normalized: bool = False
    metric: str = "l2"
    copy_threshold: float | None = None
    weights: str = "none"
    resize: str = "bicubic-antialias"


class Embedder:
    """Turns ``(B, 3, H, W)`` float images in [0, 1] into ``(B, D)`` float32 features."""

    spec: EmbedderSpec

    def __init__(self, spec: EmbedderSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.calls = 0  # batches embedded; tests count these to prove cache hits

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to the input size (antialiased bicubic) and normalise, on the device."""
        images = images.to(self.device, non_blocking=True)
        if tuple(images.shape[-2:]) != self.spec.input_size:
            images = F.interpolate(images, size=self.spec.input_size, mode="bicubic",
                                   antialias=True, align_corners=False).clamp_(0.0, 1.0)
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        return ((images - mean) / std).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map preprocessed images to features; subclasses implement it."""
        raise NotImplementedError

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> np.ndarray:
        """Embed one batch: ``(B, 3, H, W)`` in [0, 1] → ``(B, D)`` float32 numpy."""
        self.calls += 1
        x = self.preprocess(images)
        use_autocast = self.device.type == "cuda"  # never on CPU, where it is much slower
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_autocast):
            feats = self.forward(x)
        feats = feats.float().flatten(1)
        if self.spec.l2_normalized:
            feats = F.normalize(feats, dim=1)
        return feats.cpu().numpy().astype(np.float32, copy=False)
