"""From scores to flags: reference scores of non-copies, and the threshold policy.

A generated sample is flagged when its score is more extreme than all but ``alpha`` of the
reference scores (conformal; :mod:`ganaudit.metrics.copy_stats`), or, under an absolute
threshold, when its cosine similarity is at least it (``ip`` copy embedders) or its distance
at most it (``l2``). The policy is fixed before the search runs, because it also decides
which variant of an image counts as its best match (``rank_by``). p-values always come from
the reference scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ganaudit.errors import GanauditError
from ganaudit.metrics import copy_stats
from ganaudit.search.copy_search import CopySearcher, Matches, search_source


@dataclass(frozen=True)
class ThresholdPolicy:
    """How flags are decided.

    Attributes:
        absolute: the absolute threshold, or None when it is calibrated from reference scores.
        origin: ``"calibrated"``, ``"user"`` (``--copy-threshold``) or ``"published"`` (the
            copy embedder's own, e.g. SSCD's cosine 0.75).
        on: the quantity compared with the threshold: ``"score"``, ``"similarity"`` or
            ``"distance"``; it also picks each image's best variant.
        source: where a published threshold comes from.
    """

    absolute: float | None
    origin: str
    on: str
    source: str | None = None

    @property
    def rank_by(self) -> str:
        return self.on


def threshold_policy(copy_spec, copy_threshold: float | str) -> ThresholdPolicy:
    """The policy for ``--copy-threshold`` (``auto``, ``calibrated`` or a number) and a copy embedder.

    Raises:
        GanauditError: a number outside the copy embedder's range (cosine in [-1, 1], distance >= 0).
    """
    if isinstance(copy_threshold, str):
        if copy_threshold == "auto" and copy_spec.copy_threshold is not None:
            return ThresholdPolicy(float(copy_spec.copy_threshold), "published", _absolute_on(copy_spec),
                                   copy_spec.copy_threshold_source)
        return ThresholdPolicy(None, "calibrated", "score")
    value = float(copy_threshold)
    if copy_spec.metric == "ip" and not -1.0 <= value <= 1.0:
        raise GanauditError(f"--copy-threshold {value:g}: {copy_spec.name} compares by cosine similarity, "
                            "so the threshold must lie in [-1, 1]")
    if copy_spec.metric == "l2" and value < 0:
        raise GanauditError(f"--copy-threshold {value:g}: {copy_spec.name} compares by distance, which is never negative")
    return ThresholdPolicy(value, "user", _absolute_on(copy_spec))


def _absolute_on(copy_spec) -> str:
    return "similarity" if copy_spec.metric == "ip" else "distance"


@dataclass
class Reference:
    """Scores of images known not to be copies, and what they were.

    Attributes:
        matches: each reference image's best training match under the same search.
        features: the holdout's features under the audit's embedder (None without a holdout).
        info: ``{"method": "holdout" | "train-leave-one-out", "n_reference": n}``.
    """

    matches: Matches
    features: np.ndarray | None
    info: dict


def reference_scores(train, holdout, searcher: CopySearcher, seed: int, calibration_max: int,
                     batch_size: int, progress: bool | None) -> Reference:
    """Search the reference images as the generated ones are searched.

    With a holdout set: holdout→train scores. Without: leave-one-out train→train scores on
    a seeded subset of at most ``calibration_max`` training images.
    """
    if holdout is not None:
        searched = search_source(holdout, searcher, batch_size, "calibrating on holdout", progress)
        return Reference(searched.matches, searched.features,
                         {"method": "holdout", "n_reference": len(searched.matches.score)})
    rng = np.random.default_rng(seed)
    n = min(len(train), calibration_max)
    chosen = np.sort(rng.choice(len(train), size=n, replace=False))
    searched = search_source(train.subset(chosen), searcher, batch_size, "calibrating on train", progress,
                             exclude_of=chosen)
    return Reference(searched.matches, None, {"method": "train-leave-one-out", "n_reference": n})


@dataclass
class Flags:
    """The decision on every generated sample.

    Attributes:
        flagged: ``(M,)`` bool, True for samples flagged as copies.
        threshold: the threshold, in the units of ``calibration["threshold_on"]``.
        p_values: ``(M,)`` conformal p-values against the reference scores.
        significant: ``(M,)`` bool, Benjamini–Hochberg discoveries at ``fdr_q``.
        calibration: how the threshold was set (the result's ``memorization.calibration``).
    """

    flagged: np.ndarray
    threshold: float
    p_values: np.ndarray
    significant: np.ndarray
    calibration: dict


def decide_flags(gen: Matches, reference: Reference, policy: ThresholdPolicy, alpha: float, fdr_q: float,
                 copy_k: int) -> Flags:
    """Flag generated samples by ``policy`` (see the module docstring).

    Raises:
        GanauditError: too few reference images to calibrate ``alpha``.
    """
    calibration = reference.info | {"score": f"d1 / mean(d2..d{copy_k + 1}) to the training set",
                                    "augmentations": gen.names}
    ref = reference.matches.score
    if policy.absolute is None:
        try:
            threshold = copy_stats.calibrate_threshold(ref, alpha)
        except ValueError:
            raise GanauditError(
                f"calibration has {len(ref)} reference images ({calibration['method']}); alpha={alpha:g} "
                f"needs at least {math.ceil(1 / alpha) - 1}: give a larger --holdout or a larger --alpha"
            ) from None
        flagged = gen.score < threshold
        calibration["threshold_on"] = "score"
    else:
        threshold = policy.absolute
        flagged = gen.similarity >= threshold if policy.on == "similarity" else gen.distance <= threshold
        calibration |= {"method": policy.origin, "threshold_on": policy.on, "p_value_reference": calibration["method"]}
        if policy.origin == "published":
            calibration["threshold_source"] = policy.source
    p_values = copy_stats.empirical_p_values(gen.score, ref)
    significant = copy_stats.benjamini_hochberg(p_values, q=fdr_q)
    return Flags(flagged, threshold, p_values, significant, calibration)
