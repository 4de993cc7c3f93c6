"""The ``memorization.regions`` section: samples that reproduce a region of a training image.

Flags come from :func:`ganaudit.search.calibration.decide_flags`, the machinery whole-image
copy search uses, fed with each image's most copy-like tile (its score, distance and
training image; :func:`ganaudit.search.regions.as_matches`). The threshold is always
calibrated from the reference images' region scores: a published whole-image threshold
(SSCD's cosine 0.75) says nothing about tiles.
"""
from __future__ import annotations

import math

import numpy as np

from ganaudit.errors import GanauditError
from ganaudit.findings import sample_fields
from ganaudit.metrics import copy_stats
from ganaudit.search import regions as rg
from ganaudit.search.calibration import Reference, ThresholdPolicy, decide_flags

MAX_LISTED = 200  # flagged samples listed in the JSON (the count is always complete)


def regions_section(generated: rg.RegionMatches, reference: rg.RegionMatches, reference_info: dict,
                    train_tiles: rg.TrainTiles, index, source, train, config) -> dict:
    """The section: counts, the calibration, the tiling and its costs, and each flagged sample
    with the region matched in it and in the training image (``x, y, w, h`` px of each)."""
    n = len(generated.score)
    if n == 0:
        raise GanauditError("region search found no samples to search")
    # Reference images with no tile of detail say nothing about tiles that have some (they
    # score inf): the threshold is calibrated on the others, and flat samples are never flagged.
    informative = np.flatnonzero(np.isfinite(reference.score))
    reference_info = reference_info | {"n_reference": int(informative.size),
                                       "n_reference_flat": int(len(reference.score) - informative.size)}
    if informative.size == 0:
        raise GanauditError("region search: every reference image is flat (no tile with detail); drop --regions")
    ref = Reference(rg.as_matches(reference, informative), None, reference_info)
    try:
        flags = decide_flags(rg.as_matches(generated), ref, ThresholdPolicy(None, "calibrated", "score"),
                             config.alpha, config.fdr_q, config.copy_k)
    except GanauditError:
        raise GanauditError(
            f"region search: {informative.size} reference images with detail ({reference_info['method']}) cannot calibrate "
            f"alpha={config.alpha:g}; it needs at least {math.ceil(1 / config.alpha) - 1}: give a larger --holdout, "
            "a larger --alpha, or --no-regions") from None
    flags.calibration["score"] = (f"best tile's d1 / mean(d2..d{min(config.copy_k, train_tiles.n_indexed_images - 2) + 1})"
                                  " over distinct training images")
    flagged = flags.flagged
    order = np.flatnonzero(flagged)[np.argsort(generated.score[flagged], kind="stable")]
    n_flagged = int(flagged.sum())
    q_grid = generated.grid
    return {
        "n_samples": n,
        "n_flagged": n_flagged,
        "flagged_fraction": n_flagged / n,
        "flagged_fraction_ci95": list(copy_stats.binomial_ci(n_flagged, n, 0.95)),
        "n_significant": int(flags.significant.sum()),
        "threshold": flags.threshold,
        "alpha": config.alpha,
        "calibration": flags.calibration,
        "tiles": {
            "descriptor": train_tiles.descriptor,
            "tile_fraction": rg.TILE_FRACTION,
            "train_stride_fraction": rg.TRAIN_STRIDE_FRACTION,
            "query_stride_fraction": rg.QUERY_STRIDE_FRACTION,
            "train_tile_px": list(train_tiles.grid.tile),
            "sample_tile_px": list(q_grid.tile) if q_grid is not None else None,
            "tiles_per_train_image": len(train_tiles.grid.positions),
            "tiles_per_sample": len(q_grid.positions) if q_grid is not None else 0,
            "refined_tiles_per_sample": rg.REFINE_TILES,
            "n_train_images_tiled": train_tiles.n_images,
            "n_train_tiles": train_tiles.n_rows,
            "n_train_tiles_skipped_flat": train_tiles.n_skipped,
            "n_sample_tiles_skipped_flat": generated.n_skipped,
            "n_reference_tiles_skipped_flat": reference.n_skipped,
            "min_tile_std": rg.MIN_TILE_STD,
            "index_kind": index.kind,
            "index_bytes": train_tiles.nbytes,
        },
        "flagged": [_entry(int(i), generated, flags, train_tiles, source, train) for i in order[:MAX_LISTED]],
    }


def _entry(i: int, found: rg.RegionMatches, flags, train_tiles: rg.TrainTiles, source, train) -> dict:
    sample_box, train_box = rg.matched_boxes(found, i, train_tiles, flags.threshold)
    t = int(found.train_index[i])
    box = lambda b: dict(zip(("x", "y", "w", "h"), (int(v) for v in b)))  # noqa: E731
    return {
        "sample_index": i, **sample_fields(source.describe(i)),
        "train_index": t, "train_path": train.describe(t)["path"],
        "score": float(found.score[i]), "p_value": float(flags.p_values[i]), "significant": bool(flags.significant[i]),
        "distance": float(found.distance[i]),
        "similarity": None if math.isnan(found.similarity[i]) else float(found.similarity[i]),
        "sample_box": box(sample_box), "train_box": box(train_box),
        "sample_size": list(found.grid.size), "train_size": list(train_tiles.grid.size),
    }
