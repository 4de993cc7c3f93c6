"""The resampling arithmetic of the FID tools, written out so that batches resize on the device.

Each function takes ``(B, C, H, W)`` float tensors holding 8-bit values (0..255, already
quantised) and returns the resized batch; the FID protocols (``fid_protocols``) choose one.

- :func:`resize_pil_bicubic`: PIL's ``Image.resize(size, BICUBIC)`` of a 32-bit float
  (mode ``F``) image, as clean-fid's ``clean`` mode calls it on each channel: a separable
  convolution whose kernel (Keys cubic with a = -0.5) is stretched by the scale factor when
  downsampling (antialiasing), normalised to sum 1 per output pixel; the horizontal pass runs
  first, each pass accumulates in float64 and stores float32, and a dimension whose size does
  not change is not resampled. The coefficients follow Pillow's ``precompute_coeffs``
  (``libImaging/Resample.c``): centre ``(i + 0.5) * scale``, support ``2 * max(scale, 1)``,
  taps ``[trunc(centre - support + 0.5), trunc(centre + support + 0.5))`` clipped to the image.
- :func:`resize_tf1_bilinear`: TensorFlow 1's ``resize_bilinear`` with
  ``align_corners=False`` and no half-pixel centres (source coordinate ``i * in / out``, the
  last row and column repeated past the border), computed in float32 in TensorFlow's order
  (``top + (bottom - top) * dy`` of the two horizontally interpolated rows), as
  torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x`` (method ``slow``) does.
- :func:`resize_torch_bilinear`: ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False)`` (half-pixel centres, no antialiasing), as pytorch-fid (on [0, 1]
  values inside its network) and clean-fid's ``legacy_pytorch`` mode (on 0..255) call it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_BICUBIC_A = -0.5  # PIL's bicubic (Keys 1981); torch's non-antialiased bicubic uses -0.75
_BICUBIC_SUPPORT = 2.0


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = _BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=32)
def pil_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` float64 matrix of PIL's bicubic resampling along one axis.

    Row ``i`` holds the normalised filter taps of output pixel ``i``; the matrix is read-only
    (it is cached).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)  # int() truncates toward zero, as C does
        stop = min(int(centre + support + 0.5), in_size)
        taps = np.arange(first, stop)
        w = _bicubic((taps - centre + 0.5) / filterscale)
        total = w.sum()
        weights[i, first:stop] = w / total if total != 0.0 else w
    weights.setflags(write=False)
    return weights


def resize_pil_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's float-image bicubic resize of every channel of ``x`` (see the module docstring).

    Args:
        x: ``(B, C, H, W)`` float tensor.
        size: ``(H', W')``.

    Returns:
        ``(B, C, H', W')`` float32 on ``x``'s device (computed in float64 there; on MPS,
        which has no float64, on the CPU).
    """
    device = x.device
    work = torch.device("cpu") if device.type == "mps" else device
    out = x.to(work, torch.float32)
    height, width = size
    if out.shape[-1] != width:  # horizontal pass first, as PIL
        w = torch.from_numpy(np.array(pil_bicubic_weights(out.shape[-1], width))).to(work)
        out = torch.matmul(out.double(), w.T).float()
    if out.shape[-2] != height:
        w = torch.from_numpy(np.array(pil_bicubic_weights(out.shape[-2], height))).to(work)
        out = torch.matmul(w, out.double()).float()
    return out.to(device)


def _tf1_taps(in_size: int, out_size: int, device: torch.device):
    """Lower and upper source index and the float32 fraction of each output pixel."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)  # TF keeps the scale in float32
    position = torch.arange(out_size, dtype=torch.float32) * scale
    low = position.long()  # positions are >= 0: truncation is floor
    high = (low + 1).clamp_max(in_size - 1)
    fraction = position - low.float()
    return low.to(device), high.to(device), fraction.to(device)


def resize_tf1_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1 bilinear resize (no half-pixel centres) of ``(B, C, H, W)`` float32 ``x``."""
    x = x.float()
    height, width = size
    x_low, x_high, dx = _tf1_taps(x.shape[-1], width, x.device)
    y_low, y_high, dy = _tf1_taps(x.shape[-2], height, x.device)
    rows_low, rows_high = x.index_select(2, y_low), x.index_select(2, y_high)
    top_left, top_right = rows_low.index_select(3, x_low), rows_low.index_select(3, x_high)
    bottom_left, bottom_right = rows_high.index_select(3, x_low), rows_high.index_select(3, x_high)
    dx = dx.view(1, 1, 1, width)
    top = top_left + (top_right - top_left) * dx
    bottom = bottom_left + (bottom_right - bottom_left) * dx
    return top + (bottom - top) * dy.view(1, 1, height, 1)


def resize_torch_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate`` bilinear with ``align_corners=False`` (half-pixel centres, no antialias)."""
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)


def quantize_to_uint8_values(images: torch.Tensor) -> torch.Tensor:
    """Round ``[0, 1]`` images to the 8-bit values a saved PNG holds, kept as float32 0..255.

    ``floor(255 x + 0.5)`` clipped to 0..255, which is what ``torchvision.utils.save_image``
    writes (``mul(255).add_(0.5).clamp_(0, 255)`` then a truncating cast); images read from
    8-bit files (exactly ``k / 255``) come back as the integers ``k`` they were read from.
    """
    return torch.floor(images.float() * 255.0 + 0.5).clamp_(0.0, 255.0)


def is_identity(shape: tuple[int, ...], size: tuple[int, int]) -> bool:
    """Whether a batch of ``shape`` is already at ``size`` (every resize here is then exact)."""
    return tuple(shape[-2:]) == tuple(size)

