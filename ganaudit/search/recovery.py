"""Latent recovery: the latent ``z`` whose ``G(z)`` reconstructs a given image, by gradient descent.

The white-box membership test of GAN-Leaks (Chen et al. 2020) and Webster et al. (2019): for
each target image, ``restarts`` latents drawn from the prior are optimised with Adam on the
mean squared pixel error of ``G(z)`` against the target (cosine-decayed step size), and the
best of them is kept. All targets and restarts of a chunk run as one batch on the audit's
device; a chunk that runs out of memory is retried in halves (``ganaudit.device.OomSplitter``).
Each target's result depends on nothing but itself: the loss is a sum of per-image losses,
Adam is elementwise, the generator is in eval mode and the starting latents of target
``key`` and restart ``r`` come from ``numpy.random.default_rng([seed, key, r])``, so the
split (and the batch size) never changes a result.

Distances are root-mean-square pixel errors in [0, 1] units at the generator's output
resolution (targets of another size are resized to it, bicubic with antialiasing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ganaudit.device import OomSplitter
from ganaudit.plumbing import error_line


@dataclass(frozen=True)
class RecoverySettings:
    """How hard recovery tries: optimiser steps, random restarts per image, Adam's step size."""

    steps: int = 300
    restarts: int = 4
    lr: float = 0.05
    seed: int = 0


@dataclass
class Recovered:
    """The best reconstruction of each target.

    Attributes:
        distance: ``(B,)`` float64 RMS pixel error of the best restart, in [0, 1] units.
        latents: ``(B, z_dim)`` float32 latent of the best restart.
        restart: ``(B,)`` int index of the restart that won.
    """

    distance: np.ndarray
    latents: np.ndarray
    restart: np.ndarray


def gradient_problem(generator) -> str | None:
    """Why latents cannot be optimised through ``generator`` (a ``sources.generators.Generator``),
    or None when gradients reach ``z``: one forward and backward of two random latents."""
    if generator.num_classes is not None:
        return ("latent recovery of conditional generators is not supported (the class each target image "
                "would need is not known)")
    z = initial_latents(np.array([0, 1]), 1, generator.z_dim, seed=0).to(generator.device).requires_grad_(True)
    try:
        with torch.enable_grad():
            out = generator.decode(z)
            if not out.requires_grad:
                return "the generator's output carries no gradient with respect to z (it runs without autograd)"
            out.sum().backward()
    except Exception as e:  # noqa: BLE001 - any failure means: no gradients through this module
        return f"backpropagating through the generator failed: {error_line(e, with_type=True)}"
    if z.grad is None or not torch.isfinite(z.grad).all():
        return "the generator gives no finite gradient with respect to z"
    if not z.grad.abs().sum() > 0:
        return ("the generator's gradient with respect to z is zero (its output is rounded or quantised inside, "
                "or it ignores z), so no latent can be optimised")
    return None


def output_size(generator) -> tuple[int, int]:
    """``(H, W)`` of the generator's images (one forward of one latent)."""
    with torch.inference_mode():
        out = generator.decode(torch.zeros(1, generator.z_dim, device=generator.device))
    return int(out.shape[-2]), int(out.shape[-1])


def fit_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 3, h, w)`` images in [0, 1] at ``size`` (bicubic, antialiased, clamped) if not already."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)


def initial_latents(keys: np.ndarray, restarts: int, z_dim: int, seed: int) -> torch.Tensor:
    """``(B * restarts, z_dim)`` float32 standard normal latents, target-major."""
    z = [np.random.default_rng([seed, int(k), r]).standard_normal(z_dim) for k in keys for r in range(restarts)]
    return torch.from_numpy(np.stack(z).astype(np.float32))


class LatentRecovery:
    """Recovers latents of batches of target images through one generator.

    Args:
        generator: a ``sources.generators.Generator`` whose module gives gradients (check
            with :func:`gradient_problem` first).
        settings: steps, restarts, step size, seed.
        on_step: called with the number of targets that advanced one step (progress bars).
    """

    def __init__(self, generator, settings: RecoverySettings, on_step=None):
        self.generator = generator
        self.settings = settings
        self.on_step = on_step
        self.size = output_size(generator)
        self._splitter = OomSplitter(generator.device, "recovering latents")
        for parameter in getattr(generator.module, "parameters", lambda: [])():
            parameter.requires_grad_(False)  # gradients for z only

    def recover(self, targets: torch.Tensor, keys: np.ndarray, chunk: int) -> Recovered:
        """Best reconstructions of ``targets`` (``(B, 3, H, W)`` in [0, 1], CPU), ``keys[i]`` seeding
        target ``i``'s restarts; at most ``chunk`` targets optimised at a time (fewer after an
        out-of-memory)."""
        targets = fit_to(targets.float(), self.size)
        keys = np.asarray(keys, dtype=np.int64)
        positions = np.arange(len(keys))
        self._targets, self._keys = targets, keys
        rows = []
        for start in range(0, len(keys), chunk):
            rows.append(self._splitter(self._recover_chunk, positions[start:start + chunk]))
        packed = np.concatenate(rows) if rows else np.empty((0, 2 + self.generator.z_dim))
        return Recovered(packed[:, 0].astype(np.float64), packed[:, 2:].astype(np.float32),
                         packed[:, 1].astype(np.int64))

    def _recover_chunk(self, positions: np.ndarray) -> np.ndarray:
        """``(b, 2 + z_dim)``: distance, winning restart, latent; for targets ``positions``."""
        s, device, r = self.settings, self.generator.device, self.settings.restarts
        target = self._targets[torch.from_numpy(positions)].to(device).repeat_interleave(r, dim=0)
        z = initial_latents(self._keys[positions], r, self.generator.z_dim, s.seed).to(device).requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=s.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda t: 0.5 * (1.0 + math.cos(math.pi * t / s.steps)))
        with torch.enable_grad():
            for _ in range(s.steps):
                optimiser.zero_grad(set_to_none=True)
                loss = (self.generator.decode(z) - target).pow(2).flatten(1).mean(1).sum()
                loss.backward()
                optimiser.step()
                schedule.step()
                if self.on_step is not None:
                    self.on_step(len(positions))
        with torch.inference_mode():
            err = (self.generator.decode(z.detach()) - target).pow(2).flatten(1).mean(1).sqrt()
        err = err.reshape(len(positions), r).double().cpu()
        best = err.argmin(dim=1)
        latents = z.detach().reshape(len(positions), r, -1)[torch.arange(len(positions)), best.to(z.device)].cpu()
        return np.concatenate([err.min(dim=1).values.numpy()[:, None], best.numpy()[:, None].astype(np.float64),
                               latents.double().numpy()], axis=1)

    def reconstruct(self, latents: np.ndarray, batch_size: int) -> torch.Tensor:
        """``G(z)`` of given latents: ``(B, 3, H, W)`` in [0, 1] on the CPU."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(latents), batch_size):
                z = torch.from_numpy(np.ascontiguousarray(latents[start:start + batch_size], dtype=np.float32))
                out.append(self.generator.decode(z.to(self.generator.device)).cpu())
        return torch.cat(out) if out else torch.empty(0)
