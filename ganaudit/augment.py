"""Test-time augmentations: the variants of an image under which a copy is still a copy.

A generated sample is searched under each variant and its best match is kept; the same
variants are applied to the calibration images, so the threshold accounts for the extra
chances this gives every sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SHIFT_PIXELS = 2


GRID_PIXELS = 3


def variants(images: torch.Tensor, augmentations: tuple[str, ...]) -> list[tuple[str, torch.Tensor]]:
    """Return ``[(name, images)]``: the identity first, then each requested family.

    ``"flip"`` adds the horizontal mirror. ``"shift"`` adds the 8 shifts by ``SHIFT_PIXELS``
    (left, right, up, down and diagonal). ``"shift-grid"`` adds every shift of up to
    ``GRID_PIXELS`` in each direction (48 variants): what a raw-pixel embedder needs to
    re-align a copy moved by a few pixels, at 48 times the embedding cost. Distances are in
    pixels of a 32×32 image and scale with the image width; edges are replicated.
    """
    out = [("identity", images)]
    if "flip" in augmentations:
        out.append(("hflip", images.flip(-1)))
    unit = max(1, round(images.shape[-1] / 32))
    offsets: list[tuple[int, int]] = []
    if "shift-grid" in augmentations:
        offsets = [(dx, dy) for dy in range(-GRID_PIXELS, GRID_PIXELS + 1)
                   for dx in range(-GRID_PIXELS, GRID_PIXELS + 1) if (dx, dy) != (0, 0)]
    elif "shift" in augmentations:
        offsets = [(dx, dy) for dy in (-SHIFT_PIXELS, 0, SHIFT_PIXELS)
                   for dx in (-SHIFT_PIXELS, 0, SHIFT_PIXELS) if (dx, dy) != (0, 0)]
    for dx, dy in offsets:
        out.append((f"shift({dx:+d},{dy:+d})", shift(images, dx * unit, dy * unit)))
    return out


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate ``(B, C, H, W)`` images by ``(dx, dy)`` pixels, replicating the edges."""
    pad = max(abs(dx), abs(dy))
    h, w = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    top, left = pad - dy, pad - dx
    return padded[..., top : top + h, left : left + w]
