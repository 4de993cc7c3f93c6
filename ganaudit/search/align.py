"""Local alignment: the best grid variant of an image refined against its nearest training image.

The test-time grids (``ganaudit.search.augment``) re-align a moved, cropped or rotated copy
only to within half a grid step, and the copy descriptor is sharp: on the 64 px hard-edit
photos a shift of half a pixel (of the 32 px descriptor) costs a distance of about 0.13, as
much as separates many crop copies from images that are merely alike (benchmarks/hard_edits.py, the
descriptor's centre at 70%; crop copies' best grid variant had median distance 0.087 to their source, 0.007 at the exact
inverse crop). The grids also try one edit at a time: a copy that was cropped and rotated,
or cropped and hue-shifted, is undone by no single variant. So the ``"refine"`` augmentation
takes each image whose best shift, geometric or hue variant scores below ``REFINE_BELOW``
and, against the stored descriptor of the training image its best shift or geometric
variant matched (:func:`refine`):

1. picks the grid hue shift that agrees best at that variant, then, with it, the best of a
   few blocks of starts that combine the variant's crop with the grid's rotations and its
   rotation with the grid's crops (:func:`start_candidates`);
2. takes a few gradient steps on the similarity transform (angle, scale, translation) from
   each start, then the full steps from the best, the hue picked again before and after.

The refined image is then searched like any variant and scored in the geometric family.
Images are refined at about ``REFINE_SIDE`` times the embedder's input side when larger (the
descriptor sees no more), which bounds time and memory at 1024 px.

Reference images are refined by the same rule, so the calibration accounts for the extra
freedom it gives non-copies: the rule is a fixed function of an image and the training set.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F

from ganaudit.search.augment import CROP_KEEP, HUE_SHIFTS, ROTATE_DEGREES

REFINE_BELOW = 0.4  # refine only images whose best grid score (d1 / mean(d2..)) is below this
REFINE_STEPS = 30  # gradient steps per image
# One gradient step's size per geometry parameter: degrees, log-scale, translation in
# [-1, 1] frame units (0.004 is 1/16 of a pixel of a 32 px image).
PARAMS = ("angle", "log_scale", "dx", "dy", "hue")  # what refine returns per image
STEP_UNITS = (0.3, 0.004, 0.004, 0.004)
HUE_POLISH = (-0.015, -0.01, -0.005, 0.005, 0.01, 0.015)  # last, the hue this close to the grid's best
# images are refined at about this multiple of the embedder's input side when larger (the
# descriptor sees no more); the side is picked so that its whole-pixel centre crop frames the
# same part as the full image's (a 512 px image at 64 px would be framed 1% of the side
# differently: a cosine of 0.998 to its full-size features)
REFINE_SIDE = 2
# the test-time grid's variants (``copy_search.embed_variants``) are made at about this
# multiple when larger, resized bicubic: at twice the input side, a two-step resize of a
# texture lost up to 0.011 of cosine to its full-size features (photo tiles of 256 px), at
# four times (128 and 120 px for 256 and 512 px tiles) at most 0.0001
# (tests/test_copy_search.py, docs/benchmarks.md "Variants at a bounded size")
VARIANT_SIDE = 4
MAX_BATCH = 64  # images refined together (memory: a few copies of each start of each, at that size)
REFINE_STARTS = 4  # starts tried per image, one per block of start_candidates ...
TRIAL_STEPS = 4  # ... each for this many gradient steps; REFINE_STEPS more from the best
EVAL_ROWS = 512  # warped images per call when start candidates are compared
# the crop boxes' centres tried as starts, in half-sides: every other one of the crop grid's
# (augment.CROP_OFFSETS); the gradient steps bridge the rest
START_OFFSETS = (-0.12, 0.0, 0.12)

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


def hue_shift(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1] with their HSV hue rotated by per-image ``shift``
    ``(B,)`` (fractions of the colour wheel), as torchvision's ``adjust_hue`` does with one
    shift for the whole batch. Grey pixels are unchanged."""
    return hsv_to_rgb(*rgb_to_hsv(images), shift)


def rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hue in [0, 1), saturation, value)``, each ``(B, H, W)``, of ``(B, 3, H, W)`` images
    (the hexcone model: PIL's and torchvision's HSV)."""
    r, g, b = images.unbind(1)
    value, _ = images.max(1)
    chroma = value - images.min(1)[0]
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    rc, gc, bc = (value - r) / safe, (value - g) / safe, (value - b) / safe
    hue = torch.where(value == r, bc - gc, torch.where(value == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(chroma > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return hue, saturation, value


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor,
               shift: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB of ``(B, H, W)`` HSV planes, the hue first rotated by per-image
    ``shift`` ``(B,)``."""
    if shift is not None:
        hue = hue + shift.view(-1, 1, 1)
    h6 = (hue % 1.0) * 6.0
    chroma = value * saturation
    # channel n of (r, g, b) = (5, 3, 1): v - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (h6 + n) % 6.0
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, 1)


def transform(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``images`` hue-shifted by ``params[:, 4]`` (:func:`hue_shift`), then warped by
    ``params[:, :4]`` (:func:`warp`): :func:`refine`'s parameters applied."""
    return warp(hue_shift(images, params[:, 4]), params[:, :4])


def start_candidates(start: np.ndarray) -> list[np.ndarray]:
    """Where :func:`refine` may start, from each image's best grid variant ``start``
    ``(B, 4)``: blocks of ``(K, B, 4)`` candidates, of which the best of each block is one
    start: the variant itself; its scale and position with each grid rotation (and none);
    each grid crop (and none) with its rotation; each grid crop with no rotation. A copy
    that was both cropped and rotated is nearer to one of these than to either edit's variant
    alone, and a copy whose colours were changed too may have been matched best by the wrong
    edit (a crop copy by a rotation)."""
    start = np.asarray(start, dtype=np.float64).reshape(-1, 4)
    angles = []
    for angle in (0.0, *ROTATE_DEGREES):
        c = start.copy()
        c[:, 0] = angle
        angles.append(c)
    crops = [(0.0, 0.0, 0.0)] + [(math.log(f), -u / f, -v / f) for f in CROP_KEEP
                                 for v in START_OFFSETS for u in START_OFFSETS]
    blocks = [start[None], np.stack(angles)]
    for angle in (None, 0.0):
        block = []
        for crop in crops:
            c = start.copy()
            c[:, 1:] = crop
            if angle is not None:
                c[:, 0] = angle
            block.append(c)
        blocks.append(np.stack(block))
    return blocks


def reduced(embedder, images: torch.Tensor, multiple: int = REFINE_SIDE, mode: str = "bilinear") -> torch.Tensor:
    """``images`` on the embedder's device, resized (antialiased, ``mode``) to about
    ``multiple`` times its input side when larger (:func:`refine_size`)."""
    x = images.to(embedder.device, torch.float32)
    size = refine_size(tuple(x.shape[-2:]), embedder.spec, multiple)
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).clamp_(0.0, 1.0)
    return x


def refine_size(shape: tuple[int, int], spec, multiple: int = REFINE_SIDE) -> tuple[int, int]:
    """The ``(h, w)`` images of ``shape`` are refined at (or, with ``multiple=VARIANT_SIDE``,
    their grid variants made at): unchanged up to ``multiple`` times the input side; past it,
    per axis, the side between half and all of that limit whose centre crop
    (``spec.centre_crop``, whole pixels as ``base.centre_crop`` takes it) is the nearest
    fraction of the side to the full image's (the largest such side)."""
    limit = multiple * max(spec.input_size)
    if max(shape) <= limit:
        return tuple(shape)

    def margin(n: int) -> float:  # the share of the side the centre crop drops on each side
        return round(n * (1 - spec.centre_crop) / 2) / n

    out = []
    for n in shape:
        top = max(1, round(n * limit / max(shape)))
        sides = range(max(1, top // 2), top + 1)
        out.append(min(sides, key=lambda m: (abs(margin(m) - margin(n)), -m)))
    return tuple(out)


def embed_transformed(embedder, images: torch.Tensor, params: np.ndarray) -> np.ndarray:
    """The copy features of ``images`` transformed by :func:`refine`'s ``params`` ``(B, 5)``,
    float32 numpy: what the refined variant is searched with."""
    out = []
    for lo in range(0, len(images), MAX_BATCH):
        x = reduced(embedder, images[lo : lo + MAX_BATCH])
        p = torch.as_tensor(np.asarray(params[lo : lo + MAX_BATCH]), dtype=torch.float32, device=x.device)
        with torch.no_grad():
            out.append(embedder.embed(transform(x, p)))
    return np.concatenate(out) if out else np.empty((0, embedder.spec.dim), np.float32)


def refine(embedder, images: torch.Tensor, start: np.ndarray, targets: np.ndarray,
           steps: int = REFINE_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Maximise ``cos(embed(transform(image, p)), target)`` over ``p``, per image (minimise
    the squared distance for ``"l2"`` embedders).

    Per image: the grid hue shift (or none) that agrees best at the best grid variant
    ``start``; with it, the best candidate of each block of :func:`start_candidates`; a few
    gradient steps (``TRIAL_STEPS``) on the geometry from each distinct one; from the best
    of those, the best grid hue shift again and ``steps`` more gradient steps; last, the hue
    within half a grid step (``HUE_POLISH``). The hue comes first because a hue-shifted
    copy's luminance misleads the choice of geometry; several starts because the agreement
    has local maxima a grid step apart (a crop copy caught at the wrong rotation). The hue is
    searched, not stepped: the geometry's gradient steps then warp one recoloured image
    (half the cost of recolouring at every step).

    Args:
        embedder: the copy embedder (its ``preprocess`` and ``forward`` must be differentiable,
            as the weightless ``pixels-copy`` and any torch network are).
        images: ``(B, 3, H, W)`` in [0, 1].
        start: ``(B, 4)`` each image's best grid variant (:func:`variant_params`).
        targets: ``(B, D)`` unit-norm training descriptors to align with.
        steps: Adam steps (cosine-decayed step size); the best parameters seen are kept.

    Returns:
        ``((B, 5) parameters (angle, log scale, dx, dy, hue), (B,) agreement they reach)``,
        float64: the cosine for ``"ip"`` embedders, minus the squared distance for ``"l2"``;
        the best seen, the start's included.
    """
    device = embedder.device
    params_out, cos_out = [], []
    candidates = start_candidates(start)
    grid_hues = torch.tensor((0.0, *HUE_SHIFTS), device=device)
    with torch.inference_mode(False), torch.enable_grad():
        for lo in range(0, len(images), MAX_BATCH):
            x = reduced(embedder, images[lo : lo + MAX_BATCH])
            hsv = rgb_to_hsv(x)
            t = torch.as_tensor(np.asarray(targets[lo : lo + MAX_BATCH]), dtype=torch.float32, device=device)
            blocks = [torch.as_tensor(c[:, lo : lo + MAX_BATCH], dtype=torch.float32, device=device) for c in candidates]
            agree = _Agreement(embedder, hsv, t)
            hue, _ = agree.best_hue(blocks[0][0], grid_hues)
            recoloured = hsv_to_rgb(*hsv, hue)
            with torch.no_grad():
                starts = torch.stack([agree.best_geometry(block, recoloured) for block in blocks])  # (M, B, 4)
            # a few steps from every distinct start of every image at once (a row per start
            # and image; blocks often give an image the same start twice)
            m, b = starts.shape[:2]
            same = (starts[:, None] == starts[None]).all(-1)  # (M, M, B)
            repeat = torch.tril(same.permute(2, 0, 1), diagonal=-1).any(-1).T  # (M, B): an earlier start is equal
            start_of, image_of = torch.nonzero(~repeat, as_tuple=True)
            geometry, cos = _ascend(agree.of(recoloured[image_of], image_of), starts[start_of, image_of],
                                    TRIAL_STEPS)
            table = torch.full((m, b), -math.inf, device=device)
            table[start_of, image_of] = cos
            trial = torch.empty_like(starts)
            trial[start_of, image_of] = geometry
            geometry = trial[table.argmax(0), torch.arange(b, device=device)]
            hue, _ = agree.best_hue(geometry, grid_hues)
            geometry, _ = _ascend(agree.of(hsv_to_rgb(*hsv, hue)), geometry, steps)
            hue, cos = agree.best_hue(geometry, hue[None] + torch.tensor((0.0, *HUE_POLISH), device=device)[:, None])
            params = torch.cat([geometry, hue[:, None]], dim=1)
            params_out.append(params.detach().double().cpu().numpy())
            cos_out.append(cos.detach().double().cpu().numpy())
    if not params_out:
        return np.empty((0, len(PARAMS))), np.empty(0)
    return np.concatenate(params_out), np.concatenate(cos_out)


class _Agreement:
    """The agreement with ``targets`` ``(B, D)`` of images given as HSV planes ``hsv``,
    recoloured by a hue shift and warped by a geometry ``(B, 4)``."""

    def __init__(self, embedder, hsv, targets: torch.Tensor):
        self.embedder, self.hsv, self.targets = embedder, hsv, targets

    def of(self, recoloured: torch.Tensor, rows: torch.Tensor | None = None):
        """``geometry -> agreement`` of ``recoloured`` images (those of ``rows``, or all)."""
        targets = self.targets if rows is None else self.targets[rows]

        def agreement(geometry: torch.Tensor) -> torch.Tensor:
            feats = differentiable_embed(self.embedder, warp(recoloured, geometry))
            return _agreement(feats, targets, self.embedder.spec.metric)

        return agreement

    def best_hue(self, geometry: torch.Tensor, hues: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``((B,), (B,))``: per image the hue shift among ``hues`` (``(H,)``, or ``(H, B)`` per
        image) that agrees best at ``geometry``, and that agreement."""
        hues = hues if hues.ndim == 2 else hues[:, None].expand(-1, len(geometry))
        with torch.no_grad():
            scores = torch.stack([self.of(hsv_to_rgb(*self.hsv, h))(geometry) for h in hues])
        best, columns = scores.max(0)[1], torch.arange(len(geometry), device=geometry.device)
        return hues[best, columns], scores[best, columns]

    def best_geometry(self, options: torch.Tensor, recoloured: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` per image the geometry among ``options`` ``(K, B, 4)`` that agrees best
        (several options per call: the images are few, the options many)."""
        k, b = options.shape[:2]
        per_call = max(1, EVAL_ROWS // b)
        scores = []
        for lo in range(0, k, per_call):
            group = options[lo : lo + per_call]  # (G, B, 4)
            g = len(group)
            agreement = self.of(recoloured.repeat(g, 1, 1, 1), torch.arange(b, device=options.device).repeat(g))
            scores.append(agreement(group.reshape(g * b, 4)).view(g, b))
        return options[torch.cat(scores).argmax(0), torch.arange(b, device=options.device)]


def _ascend(agreement, p0: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on ``agreement(p)`` from the geometries ``p0`` ``(B, 4)``, steps of about
    ``STEP_UNITS`` per parameter with a cosine-decayed size: ``(best parameters seen, their
    agreement)``, the start's included."""
    units = torch.tensor(STEP_UNITS, dtype=torch.float32, device=p0.device)
    delta = torch.zeros_like(p0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=1.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=0.05)
    best = torch.full((len(p0),), -math.inf, device=p0.device)
    best_p = p0.clone()
    for i in range(steps + 1):
        opt.zero_grad()
        p = p0 + delta * units
        cos = agreement(p)
        with torch.no_grad():
            better = cos > best
            best = torch.where(better, cos, best)
            best_p[better] = p[better]
        if i == steps:
            break
        (-cos.sum()).backward()
        opt.step()
        schedule.step()
    return best_p.detach(), best.detach()


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
