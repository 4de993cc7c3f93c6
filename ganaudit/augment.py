"""Test-time augmentations: the variants of an image under which a copy is still a copy.

A generated sample is searched under each variant and its best match is kept; the same
variants are applied to the calibration images, so the threshold accounts for the extra
chances this gives every sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SHIFT_PIXELS = 2


def variants(images: torch.Tensor, augmentations: tuple[str, ...]) -> list[tuple[str, torch.Tensor]]:
    """Return ``[(name, images)]``: the identity first, then each requested family.

    ``"flip"`` adds the horizontal mirror; ``"shift"`` adds shifts by ``SHIFT_PIXELS`` (scaled to
    the image size, 2 px at 32×32) left, right, up and down with edge pixels replicated.
    """
    out = [("identity", images)]
    if "flip" in augmentations:
        out.append(("hflip", images.flip(-1)))
    if "shift" in augmentations:
        step = max(1, round(SHIFT_PIXELS * images.shape[-1] / 32))
        for name, dx, dy in (("shift_left", -step, 0), ("shift_right", step, 0),
                             ("shift_up", 0, -step), ("shift_down", 0, step)):
            out.append((name, shift(images, dx, dy)))
    return out


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate ``(B, C, H, W)`` images by ``(dx, dy)`` pixels, replicating the edges."""
    pad = max(abs(dx), abs(dy))
    h, w = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    top, left = pad - dy, pad - dx
    return padded[..., top : top + h, left : left + w]
