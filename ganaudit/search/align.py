"""Local alignment: the best grid variant of an image refined against its nearest training image.

The test-time grids (``ganaudit.search.augment``) re-align a moved, cropped or rotated copy
only to within half a grid step, and the copy descriptor is sharp: on the 64 px hard-edit
photos a shift of half a pixel (of the 32 px descriptor) costs a distance of about 0.13, as
much as separates many crop copies from images that are merely alike (benchmarks/hard_edits.py, the
descriptor's centre at 70%; crop copies' best grid variant had median distance 0.087 to their source, 0.007 at the exact
inverse crop). So the ``"refine"`` augmentation takes each image's best variant of the
shift and geometric families, and, when its score is below ``REFINE_BELOW``, optimises the
similarity transform (angle, scale, translation) by gradient ascent on the cosine between
the warped image's copy descriptor and the stored descriptor of the training image that
variant matched. The refined image is then searched like any variant and scored in the
geometric family.

Reference images are refined by the same rule, so the calibration accounts for the extra
freedom it gives non-copies: the rule is a fixed function of an image and the training set.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F

REFINE_BELOW = 0.4  # refine only images whose best grid score (d1 / mean(d2..)) is below this
REFINE_STEPS = 30  # gradient steps per image
# One step's size per parameter: degrees, log-scale, translation in [-1, 1] frame units
# (0.004 is 1/16 of a pixel of a 32 px image).
STEP_UNITS = (0.3, 0.004, 0.004, 0.004)
MAX_BATCH = 64  # images refined together (memory: a few copies of each image for the backward pass)

_SHIFT = re.compile(r"shift\(([+-]\d+),([+-]\d+)\)")
_ZOOM = re.compile(r"zoom\(-(\d+)\)")
_ROTATE = re.compile(r"rotate\(([+-]\d+(?:\.\d+)?)\)")
_CROP = re.compile(r"crop\(([\d.]+),([+-][\d.]+),([+-][\d.]+)\)")


def variant_params(name: str, height: int, width: int) -> tuple[float, float, float, float] | None:
    """``(angle in degrees, log scale, dx, dy)`` of :func:`warp` that makes variant ``name`` of
    an image of ``height × width``, or None for a variant that is not a similarity transform of
    the image (the mirror, hue rotations).

    Agrees with ``augment.variants``: a shift of ``(dx, dy)`` units (``unit`` pixels per 32)
    takes the input at ``p - 2·unit·(dx, dy) / (W, H)``; ``zoom(-c)`` shrinks by
    ``(W - 2c·unit) / W``; ``rotate(a)`` and ``crop(f, u, v)`` are ``augment.affine``'s.
    """
    unit = max(1, round(width / 32))
    if name == "identity":
        return (0.0, 0.0, 0.0, 0.0)
    if m := _SHIFT.fullmatch(name):
        dx, dy = int(m.group(1)), int(m.group(2))
        return (0.0, 0.0, -2.0 * dx * unit / width, -2.0 * dy * unit / height)
    if m := _ZOOM.fullmatch(name):
        return (0.0, math.log((width - 2 * int(m.group(1)) * unit) / width), 0.0, 0.0)
    if m := _ROTATE.fullmatch(name):
        return (float(m.group(1)), 0.0, 0.0, 0.0)
    if m := _CROP.fullmatch(name):
        f, u, v = (float(g) for g in m.groups())
        return (0.0, math.log(f), -u / f, -v / f)
    return None


def warp(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` images resampled by per-image ``params`` ``(B, 4)`` (angle in degrees,
    log scale, dx, dy): output point ``p`` takes the input at ``R(angle) p / scale + (dx, dy)``,
    bilinear, edges reflected, as ``augment.affine``. Differentiable in ``params``."""
    angle = params[:, 0] * (math.pi / 180.0)
    inv_scale = torch.exp(-params[:, 1])
    c, s = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.stack([torch.stack([c, -s, params[:, 2]], 1), torch.stack([s, c, params[:, 3]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def refine(embedder, images: torch.Tensor, start: np.ndarray, targets: np.ndarray,
           steps: int = REFINE_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Maximise ``cos(embed(warp(image, p)), target)`` over ``p`` from ``start``, per image
    (minimise the squared distance for ``"l2"`` embedders).

    Args:
        embedder: the copy embedder (its ``preprocess`` and ``forward`` must be differentiable,
            as the weightless ``pixels-copy`` and any torch network are).
        images: ``(B, 3, H, W)`` in [0, 1].
        start: ``(B, 4)`` starting parameters (:func:`variant_params`).
        targets: ``(B, D)`` unit-norm training descriptors to align with.
        steps: Adam steps (cosine-decayed step size); the best parameters seen are kept.

    Returns:
        ``((B, 4) parameters, (B,) agreement they reach)``, float64: the cosine for ``"ip"``
        embedders, minus the squared distance for ``"l2"``; the best seen, the start's included.
    """
    device = embedder.device
    params_out, cos_out = [], []
    units = torch.tensor(STEP_UNITS, dtype=torch.float32, device=device)
    with torch.inference_mode(False), torch.enable_grad():
        for lo in range(0, len(images), MAX_BATCH):
            x = images[lo : lo + MAX_BATCH].to(device, torch.float32).clone()
            p0 = torch.as_tensor(np.asarray(start[lo : lo + MAX_BATCH]), dtype=torch.float32, device=device)
            t = torch.as_tensor(np.asarray(targets[lo : lo + MAX_BATCH]), dtype=torch.float32, device=device)
            delta = torch.zeros_like(p0, requires_grad=True)
            opt = torch.optim.Adam([delta], lr=1.0)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=0.05)
            best = torch.full((len(p0),), -2.0, device=device)
            best_p = p0.clone()
            for i in range(steps + 1):
                opt.zero_grad()
                p = p0 + delta * units
                cos = _agreement(differentiable_embed(embedder, warp(x, p)), t, embedder.spec.metric)
                with torch.no_grad():
                    better = cos > best
                    best = torch.where(better, cos, best)
                    best_p[better] = p[better]
                if i == steps:
                    break
                (-cos.sum()).backward()
                opt.step()
                schedule.step()
            params_out.append(best_p.detach().double().cpu().numpy())
            cos_out.append(best.detach().double().cpu().numpy())
    if not params_out:
        return np.empty((0, 4)), np.empty(0)
    return np.concatenate(params_out), np.concatenate(cos_out)


def _agreement(feats: torch.Tensor, targets: torch.Tensor, metric: str) -> torch.Tensor:
    """Per row: the cosine (``"ip"`` embedders, unit features) or minus the squared distance."""
    if metric == "ip":
        return (feats * targets).sum(1)
    return -((feats - targets) ** 2).sum(1)


def differentiable_embed(embedder, x: torch.Tensor) -> torch.Tensor:
    """The embedder's unit-norm features of ``x`` with gradients (``Embedder.embed`` runs
    under inference mode and returns numpy)."""
    feats = embedder.forward(embedder.preprocess(x)).float().flatten(1)
    return F.normalize(feats, dim=1) if embedder.spec.l2_normalized else feats
