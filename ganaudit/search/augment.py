"""Test-time augmentations: the variants of an image under which a copy is still a copy.

A generated sample is searched under each variant and its best match is kept; the same
variants are applied to the calibration images, so the threshold accounts for the extra
chances this gives every sample. Variants are made one at a time, so a batch never holds
more than one augmented copy of itself.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where images are made, so the names above load without it
    import torch

AUGMENTATIONS = ("flip", "shift", "shift-grid", "zoom", "rotate", "crop", "hue", "refine")
SHIFT_PIXELS = 2
GRID_PIXELS = 3
ZOOM_PIXELS = (1, 2, 3)
ROTATE_DEGREES = (-9, -6, -3, 3, 6, 9)
CROP_KEEP = (0.86, 0.91)  # the side kept by the crops "crop" undoes
CROP_OFFSETS = (-0.12, -0.06, 0.0, 0.06, 0.12)  # where the kept box's centre lies, in half-sides
HUE_SHIFTS = (-0.12, -0.09, -0.06, -0.03, 0.03, 0.06, 0.09, 0.12)  # fractions of the HSV colour wheel
# Families are calibrated apart (``ganaudit.search.calibration``): a variant of one family
# gives non-copies extra chances only against that family's threshold.
FAMILIES = {"identity": "aligned", "hflip": "aligned", "shift": "shift", "zoom": "shift",
            "rotate": "geometric", "crop": "geometric", "hue": "colour", "refined": "geometric"}


def variants(images: torch.Tensor, augmentations: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, images)``: the identity first, then each requested family.

    Distances are in pixels of a 32×32 image and scale with the image width; edges are
    replicated.

    - ``"flip"``: the horizontal mirror.
    - ``"shift"``: the 8 shifts by ``SHIFT_PIXELS`` (left, right, up, down and diagonal).
    - ``"shift-grid"``: every shift of up to ``GRID_PIXELS`` in each direction (48 variants),
      which re-aligns a copy moved by up to 3 pixels exactly; replaces ``"shift"``.
    - ``"zoom"``: the image shrunk about its centre by ``c`` pixels on each side, for each
      ``c`` in ``ZOOM_PIXELS``: undoes a centred crop of ``c`` pixels per side that was
      resized back to the full frame ("slightly cropped"). A zoom that would leave no image
      (``2c`` at least the image's side: tiny images) is skipped; the names yielded say which ran.
    - ``"rotate"``: rotations by each angle in ``ROTATE_DEGREES`` about the centre, edges
      reflected: undoes a rotation of up to about 10 degrees to within 1.5 degrees.
    - ``"crop"``: for each kept fraction ``f`` in ``CROP_KEEP`` and each offset ``(u, v)`` in
      ``CROP_OFFSETS`` squared, the image shrunk by ``f`` and moved so that it lands where a
      box of side ``f`` centred at ``(u, v)`` (in half-sides) would lie in its source, edges
      reflected: undoes crop-and-resize of up to about 15% of the side anywhere in the frame
      (50 variants).
    - ``"hue"``: the HSV hue rotated by each fraction of the colour wheel in ``HUE_SHIFTS``
      (torchvision's ``adjust_hue``): undoes a hue shift of up to about 0.135 of the wheel
      to within 0.015, so a luminance descriptor sees the copy's own brightness pattern again.
      Grey images are unchanged by it.

    ``"refine"`` yields nothing here: it refines the best of these variants after the search
    (``ganaudit.search.align``; its results are named ``"refined"``).
    """
    yield "identity", images
    if "flip" in augmentations:
        yield "hflip", images.flip(-1)
    unit = max(1, round(images.shape[-1] / 32))
    offsets: list[tuple[int, int]] = []
    if "shift-grid" in augmentations:
        offsets = [(dx, dy) for dy in range(-GRID_PIXELS, GRID_PIXELS + 1)
                   for dx in range(-GRID_PIXELS, GRID_PIXELS + 1) if (dx, dy) != (0, 0)]
    elif "shift" in augmentations:
        offsets = [(dx, dy) for dy in (-SHIFT_PIXELS, 0, SHIFT_PIXELS)
                   for dx in (-SHIFT_PIXELS, 0, SHIFT_PIXELS) if (dx, dy) != (0, 0)]
    for dx, dy in offsets:
        yield f"shift({dx:+d},{dy:+d})", shift(images, dx * unit, dy * unit)
    if "zoom" in augmentations:
        for c in ZOOM_PIXELS:
            if 2 * c * unit < min(images.shape[-2:]):
                yield f"zoom(-{c})", zoom_out(images, c * unit)
    if "rotate" in augmentations:
        for angle in ROTATE_DEGREES:
            yield f"rotate({angle:+d})", affine(images, angle=angle)
    if "crop" in augmentations:
        for f in CROP_KEEP:
            for v in CROP_OFFSETS:
                for u in CROP_OFFSETS:
                    yield f"crop({f:g},{u:+g},{v:+g})", affine(images, scale=f, dx=-u / f, dy=-v / f)
    if "hue" in augmentations:
        from torchvision.transforms.functional import adjust_hue

        for d in HUE_SHIFTS:
            yield f"hue({d:+g})", adjust_hue(images, d)


def family(name: str) -> str:
    """The calibration family of a variant name: ``"shift(+1,-2)"`` → ``"shift"`` (``FAMILIES``)."""
    return FAMILIES[name.split("(")[0]]


def affine(images: torch.Tensor, angle: float = 0.0, scale: float = 1.0, dx: float = 0.0,
           dy: float = 0.0) -> torch.Tensor:
    """Resample ``(B, C, H, W)`` images: output point ``p`` (coordinates in [-1, 1]) takes the
    input at ``R(angle) p / scale + (dx, dy)``, bilinear, edges reflected. ``scale < 1`` shrinks."""
    import math

    import torch
    import torch.nn.functional as F

    a = math.radians(angle)
    c, s = math.cos(a) / scale, math.sin(a) / scale
    theta = torch.tensor([[c, -s, dx], [s, c, dy]], dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate ``(B, C, H, W)`` images by ``(dx, dy)`` pixels, replicating the edges."""
    import torch.nn.functional as F

    pad = max(abs(dx), abs(dy))
    h, w = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    top, left = pad - dy, pad - dx
    return padded[..., top : top + h, left : left + w]


def zoom_out(images: torch.Tensor, border: int) -> torch.Tensor:
    """Shrink ``(B, C, H, W)`` images to ``(H - 2·border, W - 2·border)`` about the centre,
    replicating the edges into the freed border: the inverse of cropping ``border`` pixels
    from each side and resizing back."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    if 2 * border >= min(h, w):
        raise ValueError(f"cannot zoom out by {border} pixels per side an image of {h}x{w}")
    small = F.interpolate(images, size=(h - 2 * border, w - 2 * border), mode="bicubic",
                          antialias=True, align_corners=False).clamp_(0.0, 1.0)
    return F.pad(small, (border, border, border, border), mode="replicate")
