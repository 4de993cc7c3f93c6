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
from ganaudit.search.copy_search import ROW_FIELDS, CopySearcher, Matches, search_source


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
        features: the holdout's features under the audit's embedder (None without a holdout);
            all holdout images, whatever hygiene excludes from ``matches``.
        info: ``{"method": "holdout" | "train-leave-one-out" | "holdout+train-leave-one-out",
            "n_reference": n, ...}``.
        origin: ``(n,)`` ``"holdout"`` or ``"train"`` per reference image (None: all ``info["method"]``).
        image_index: ``(n,)`` index of each in the holdout or the training set.
        contrast: ``(n,)`` RMS contrast of each (``search.hygiene``), or None.
    """

    matches: Matches
    features: np.ndarray | None
    info: dict
    origin: np.ndarray | None = None
    image_index: np.ndarray | None = None
    contrast: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> "Reference":
        """The reference images where ``keep`` (bool) is True; features and info unchanged."""
        m = self.matches
        fields = {f: getattr(m, f)[keep] for f in ROW_FIELDS}
        pick = (lambda a: None if a is None else a[keep])
        return Reference(Matches(**fields, names=m.names, family_score=pick(m.family_score), families=m.families),
                         self.features, dict(self.info), pick(self.origin),
                         pick(self.image_index), pick(self.contrast))

    @staticmethod
    def join(first: "Reference", second: "Reference", method: str) -> "Reference":
        """Both references' images (the first's features), as one reference of ``method``."""
        cat = (lambda a, b: None if a is None or b is None else np.concatenate([a, b]))
        matches = Matches.concatenate([first.matches, second.matches])
        return Reference(matches, first.features, {"method": method, "n_reference": len(matches.score)},
                         cat(first.origin, second.origin), cat(first.image_index, second.image_index),
                         cat(first.contrast, second.contrast))


def reference_scores(train, holdout, searcher: CopySearcher, seed: int, calibration_max: int,
                     batch_size: int, progress: bool | None) -> Reference:
    """Search the reference images as the generated ones are searched.

    With a holdout set: holdout→train scores. Without: leave-one-out train→train scores on
    a seeded subset of at most ``calibration_max`` training images.
    """
    if holdout is not None:
        searched = search_source(holdout, searcher, batch_size, "calibrating on holdout", progress)
        n = len(searched.matches.score)
        return Reference(searched.matches, searched.features, {"method": "holdout", "n_reference": n},
                         np.full(n, "holdout"), np.arange(n), searched.contrast)
    rng = np.random.default_rng(seed)
    n = min(len(train), calibration_max)
    chosen = np.sort(rng.choice(len(train), size=n, replace=False))
    # Only the matches are kept: the audit's embedder (when it is not the copy embedder) is not
    # run on these training images again.
    searched = search_source(train.subset(chosen), searcher, batch_size, "calibrating on train", progress,
                             exclude_of=chosen, features=False)
    return Reference(searched.matches, None, {"method": "train-leave-one-out", "n_reference": n},
                     np.full(n, "train"), chosen, searched.contrast)


def needed_references(alpha: float) -> int:
    """The fewest reference images that resolve level ``alpha`` (``floor(alpha (n + 1)) >= 1``)."""
    n = max(0, math.ceil(1 / alpha) - 1)
    while math.floor(alpha * (n + 1) * (1 + copy_stats._COUNT_RTOL)) < 1:
        n += 1
    while n > 0 and math.floor(alpha * n * (1 + copy_stats._COUNT_RTOL)) >= 1:
        n -= 1
    return n


def clean_reference(reference: Reference, published_similarity: float | None,
                    unit_norm: bool = False) -> tuple[Reference, dict]:
    """``reference`` less its near-duplicates of training images and its low-information images
    (``ganaudit.search.hygiene``), and the counts: ``{"n_searched", "n_near_duplicates",
    "n_low_information", "n_kept", "near_duplicate": (n,) bool, "low_information_kept"}``.

    When every image that is not a near-duplicate is low-information (a constant training
    set), those are kept rather than leave no reference, and ``low_information_kept`` says so."""
    from ganaudit.search import hygiene

    m = reference.matches
    low = (hygiene.low_information(reference.contrast) if reference.contrast is not None
           else np.zeros(len(m.score), bool))
    dup = hygiene.near_duplicates(m.score, m.similarity, published_similarity,
                                  m.distance if unit_norm else None) & ~low
    keep = ~dup & ~low
    low_kept = not keep.any() and low.any()
    if low_kept:  # a reference of blank images only (a constant training set): calibrate on it, and say so
        keep = ~dup
    counts = {"n_searched": int(len(m.score)), "n_near_duplicates": int(dup.sum()),
              "n_low_information": int(low.sum()), "n_kept": int(keep.sum()), "near_duplicate": dup,
              "low_information_kept": bool(low_kept)}
    clean = reference.subset(keep)
    clean.info["n_reference"] = int(keep.sum())
    return clean, counts


def calibrate_reference(train, holdout, searcher: CopySearcher, seed: int, calibration_max: int, batch_size: int,
                        progress: bool | None, alpha: float,
                        published_similarity: float | None = None) -> tuple[Reference, Reference, dict]:
    """The reference the flags are calibrated on, after hygiene; enlarged when too small.

    The holdout (or, without one, leave-one-out training images) is searched and cleaned
    (``clean_reference``). When a holdout's clean images are too few to resolve ``alpha``,
    leave-one-out training images are added beside them (method
    ``"holdout+train-leave-one-out"``), cleaned alike.

    Returns:
        ``(clean reference, searched reference, counts)``: the searched one holds every
        reference image with its ``near_duplicate`` mask in ``counts`` (for the report's pairs).
    """
    searched = reference_scores(train, holdout, searcher, seed, calibration_max, batch_size, progress)
    unit = searcher.index.metric == "ip"
    clean, counts = clean_reference(searched, published_similarity, unit)
    if holdout is not None and counts["n_kept"] < needed_references(alpha):
        loo = reference_scores(train, None, searcher, seed, calibration_max, batch_size, progress)
        loo_clean, loo_counts = clean_reference(loo, published_similarity, unit)
        searched = Reference.join(searched, loo, "holdout+train-leave-one-out")
        clean = Reference.join(clean, loo_clean, "holdout+train-leave-one-out")
        counts = {k: (np.concatenate([counts[k], loo_counts[k]]) if k == "near_duplicate"
                      else counts[k] or loo_counts[k] if k == "low_information_kept" else counts[k] + loo_counts[k])
                  for k in counts}
        clean.info |= {"n_holdout": int((clean.origin == "holdout").sum()), "n_train": int((clean.origin == "train").sum()),
                       "why": f"the holdout's {int((clean.origin == 'holdout').sum())} usable images cannot resolve "
                              f"alpha={alpha:g} (needs {needed_references(alpha)}): leave-one-out training "
                              "images were added"}
    clean.info |= {"n_searched": counts["n_searched"], "n_excluded": counts["n_searched"] - counts["n_kept"]}
    if counts["low_information_kept"]:
        clean.info["low_information_kept"] = True
    return clean, searched, counts


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
                 copy_k: int, withheld: np.ndarray | None = None) -> Flags:
    """Flag generated samples by ``policy`` (see the module docstring).

    When the reference cannot resolve ``alpha`` (fewer than ``needed_references(alpha)``
    images), the threshold is set at the finest level it can resolve, ``1 / (n + 1)``, and
    the calibration says so (``level: "finest-attainable"``, ``alpha_achieved``).

    Args:
        withheld: ``(M,)`` bool, samples never flagged (low-information images); their count
            among the would-be flags is ``calibration["n_withheld"]``.

    Raises:
        GanauditError: no reference image is left to calibrate on.
    """
    calibration = reference.info | {"score": f"d1 / mean(d2..d{copy_k + 1}) to the training set",
                                    "augmentations": gen.names}
    ref = reference.matches.score
    n_ref = len(ref)
    if n_ref == 0:
        searched = calibration.get("n_searched", 0)
        raise GanauditError(
            f"calibration has no reference image left ({calibration['method']}: {searched} searched, every one a "
            "near-duplicate of a training image or low-information): give a --holdout of images that are not in "
            "the training set, or an absolute --copy-threshold")
    excluded = int(calibration.get("n_excluded", 0))
    if policy.absolute is None and _families_match(gen, reference.matches):
        return _decide_per_family(gen, reference, alpha, fdr_q, calibration, withheld)
    if policy.absolute is None:
        try:
            threshold = copy_stats.calibrate_threshold(ref, alpha)
            achieved = math.floor(alpha * (n_ref + 1) * (1 + copy_stats._COUNT_RTOL)) / (n_ref + 1)
            calibration |= {"level": "requested", "alpha_achieved": achieved}
        except ValueError:
            threshold = float(np.min(ref))  # j = 1: the finest level n reference scores resolve
            achieved = 1 / (n_ref + 1)
            calibration |= {"level": "finest-attainable", "alpha_achieved": achieved,
                            "level_note": f"alpha={alpha:g} needs at least {needed_references(alpha)} reference "
                                          f"images, {n_ref} were usable: flags are at level 1/{n_ref + 1} = "
                                          f"{achieved:.3g}, so up to {achieved:.1%} of images that are not copies "
                                          "may be flagged; a larger --holdout resolves alpha"}
        flagged = gen.score < threshold
        calibration["threshold_on"] = "score"
        calibration["alpha_bound_if_excluded_were_clean"] = min(1.0, achieved + excluded / (n_ref + excluded + 1))
    else:
        threshold = policy.absolute
        flagged = gen.similarity >= threshold if policy.on == "similarity" else gen.distance <= threshold
        calibration |= {"method": policy.origin, "threshold_on": policy.on, "p_value_reference": calibration["method"]}
        if policy.origin == "published":
            calibration["threshold_source"] = policy.source
    p_values = copy_stats.empirical_p_values(gen.score, ref)
    significant = copy_stats.benjamini_hochberg(p_values, q=fdr_q)
    if withheld is not None:
        calibration["n_withheld"] = int((flagged & withheld).sum())
        flagged = flagged & ~withheld
        significant = significant & ~withheld
    return Flags(flagged, threshold, p_values, significant, calibration)


def _families_match(gen: Matches, ref: Matches) -> bool:
    return (gen.family_score is not None and ref.family_score is not None and gen.families == ref.families
            and len(gen.families) > 1)


FAMILY_SCALE_LEVEL = 0.1  # the reference quantile each family's scores are divided by


def family_scaled_scores(gen_scores: np.ndarray, ref_scores: np.ndarray,
                         level: float = FAMILY_SCALE_LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One score per image over augmentation families: ``min_f score_f / scale_f``.

    ``scale_f`` is the ``level`` quantile of the reference images' scores in family ``f``:
    what a non-copy reaches there. Dividing by it puts the families on one scale, so an
    image counts as copy-like in the family where it is most extreme *for that family*: the
    many chances rotations and crops give a non-copy lower the geometric family's scale,
    not the bar an exact or re-encoded copy must clear in the aligned family.

    Args:
        gen_scores: ``(M, F)`` each generated image's best score within each family.
        ref_scores: ``(n, F)`` the same for the reference images.
        level: the reference quantile used as each family's scale.

    Returns:
        ``(M,)`` and ``(n,)`` scaled scores (float64), and the ``(F,)`` scales. A family whose
        scale is 0 (most reference images exact duplicates) counts only exact matches.
    """
    gen_scores, ref_scores = np.asarray(gen_scores, np.float64), np.asarray(ref_scores, np.float64)
    scales = np.quantile(ref_scores, level, axis=0)

    def scaled(x):
        safe = np.where(scales > 0, scales, 1.0)
        return np.where(scales > 0, x / safe, np.where(x > 0, np.inf, 0.0)).min(axis=1)

    return scaled(gen_scores), scaled(ref_scores), scales


def _decide_per_family(gen: Matches, reference: Reference, alpha: float, fdr_q: float, calibration: dict,
                       withheld: np.ndarray | None = None) -> Flags:
    """Calibrated flags when the search ran several augmentation families (``family_scaled_scores``).

    The conformal rule of ``calibrate_threshold`` on the scaled scores: the false-flag rate
    stays at most ``alpha``, while an exact or re-encoded copy is judged by the aligned
    family's own threshold, not lowered by the chances rotations and crops give every
    non-copy. Read per family, the rule is a score threshold each (``family_thresholds``):
    flagged if and only if the score in some family is below its threshold.
    """
    ref = reference.matches
    gen_u, ref_u, scales = family_scaled_scores(gen.family_score, ref.family_score)
    n_ref = len(ref_u)
    try:
        threshold = copy_stats.calibrate_threshold(ref_u, alpha)
        achieved = math.floor(alpha * (n_ref + 1) * (1 + copy_stats._COUNT_RTOL)) / (n_ref + 1)
        calibration |= {"level": "requested", "alpha_achieved": achieved}
    except ValueError:  # as decide_flags: the finest level the reference resolves
        threshold = float(np.min(ref_u))
        achieved = 1 / (n_ref + 1)
        calibration |= {"level": "finest-attainable", "alpha_achieved": achieved,
                        "level_note": f"alpha={alpha:g} needs at least {needed_references(alpha)} reference "
                                      f"images, {n_ref} were usable: flags are at level 1/{n_ref + 1} = "
                                      f"{achieved:.3g}; a larger --holdout resolves alpha"}
    excluded = int(calibration.get("n_excluded", 0))
    calibration["alpha_bound_if_excluded_were_clean"] = min(1.0, achieved + excluded / (n_ref + excluded + 1))
    thresholds = {name: float(threshold * scale) for name, scale in zip(ref.families, scales)}
    flagged = gen_u < threshold
    p_values = copy_stats.empirical_p_values(gen_u, ref_u)
    significant = copy_stats.benjamini_hochberg(p_values, q=fdr_q)
    if withheld is not None:
        calibration["n_withheld"] = int((flagged & withheld).sum())
        flagged, significant = flagged & ~withheld, significant & ~withheld
    calibration |= {"threshold_on": "score", "per_family": True, "families": list(ref.families),
                    "family_thresholds": thresholds, "family_scale_level": FAMILY_SCALE_LEVEL,
                    "scaled_threshold": float(threshold)}
    return Flags(flagged, thresholds.get("aligned", min(thresholds.values())), p_values, significant, calibration)
