"""The few pictures a report shows, re-read or re-generated after the run, as data URIs.

Nothing here is kept during the audit: flagged samples are generated again from their seeds,
training images are read again from disk. Galleries are bounded by ``MAX_*`` below.
"""
from __future__ import annotations

import base64
import io
import logging

import numpy as np
import torch

from ganaudit.review.report_context import evidence_images

log = logging.getLogger(__name__)

MAX_GALLERY = 24
MAX_COPIED = 12
MAX_RECOVERED = 12  # latent recovery's table (findings.recovery.SHOWN latents are kept)
THUMBNAIL = 96


def to_data_uri(image: torch.Tensor) -> str:
    """A ``(3, H, W)`` [0, 1] tensor as a PNG data URI, upscaled (nearest) or shrunk to THUMBNAIL px."""
    from PIL import Image

    arr = (image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    im = Image.fromarray(np.ascontiguousarray(arr))
    scale = THUMBNAIL / max(im.size)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BICUBIC
    im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), resample)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def wanted_images(result) -> tuple[set[int], set[int]]:
    """Which samples and training images the report shows: ``(sample indices, train indices)``."""
    mem, cov = result.memorization, result.coverage
    samples, train = set(), set()
    for entry in mem.get("flagged", [])[:MAX_GALLERY]:
        samples.add(entry["sample_index"])
        train.add(entry["train_index"])
    for entry in ((mem.get("regions") or {}).get("flagged") or [])[:MAX_GALLERY]:  # region search's pairs
        samples.add(entry["sample_index"])
        train.add(entry["train_index"])
    for entry in mem.get("leaked_train_examples", [])[:MAX_COPIED]:
        train.add(entry["train_index"])
    for entry in cov.get("sample_grid", []):
        samples.add(entry["sample_index"])
        train.add(entry["train_index"])
    for row in cov.get("modes", {}).get("per_mode", []):
        if not row.get("covered", True):
            train.update(e["train_index"] for e in row.get("examples", []))
    recovery = getattr(result, "recovery", None) or {}
    train.update(t["train_index"] for t in recovery.get("train", [])[:MAX_RECOVERED])
    extra_samples, extra_train = evidence_images(result)  # evidence per leaked training image
    hygiene = mem.get("hygiene") or {}
    for pair in hygiene.get("reference", {}).get("pairs", [])[:MAX_GALLERY]:
        train.add(pair["train_index"])
        if pair["reference"] == "train":
            train.add(pair["reference_index"])
    for group in hygiene.get("train_duplicates", {}).get("groups", [])[:MAX_COPIED]:
        train.update(m["train_index"] for m in group["members"][:6])
    return samples | extra_samples, train | extra_train


def wanted_holdout(result) -> set[int]:
    """Holdout images the report shows: those that duplicate training images."""
    pairs = (result.memorization.get("hygiene") or {}).get("reference", {}).get("pairs", [])
    return {p["reference_index"] for p in pairs[:MAX_GALLERY] if p["reference"] == "holdout"}


def collect_images(result, context) -> dict[str, str]:
    """Map ``"sample:i"`` and ``"train:j"`` to data URIs for everything the report shows."""
    samples, train = wanted_images(result)
    images = {}
    with torch.inference_mode():
        for i in sorted(samples):
            images[f"sample:{i}"] = to_data_uri(context.source.load(i))
        for j in sorted(train):
            images[f"train:{j}"] = to_data_uri(context.train.load(j))
        for j, image in getattr(context, "reconstructions", {}).items():
            images[f"recovered:{j}"] = to_data_uri(image)
        if context.holdout is not None:
            for j in sorted(wanted_holdout(result)):
                images[f"holdout:{j}"] = to_data_uri(context.holdout.load(j))
    return images
