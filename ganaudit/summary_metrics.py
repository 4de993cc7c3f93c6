"""Turning features and matches into the result's ``memorization`` and ``coverage`` sections.

The numbers come from the pure functions in ``ganaudit.metrics``; this module picks their
inputs (subsets, thresholds, calibration), names the outputs as the JSON contract does, and
adds what a reader needs to check them (paths, seeds, histograms).
"""
from __future__ import annotations

import logging

import numpy as np

from ganaudit.config import AuditConfig
from ganaudit.copysearch import Matches
from ganaudit.errors import GanauditError
from ganaudit.metrics.clustering import nearest_centroid
from ganaudit.metrics.inception_score import inception_score
from ganaudit.metrics import copy_stats, coverage as cov, diversity, fid, memorization as mem, modes

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 40
SAMPLE_GRID = 24


def absolute_threshold(copy_spec, config: AuditConfig) -> tuple[float, str] | None:
    """``(value, "user" or "published")`` when flags come from an absolute threshold, else None.

    ``copy_threshold`` is ``auto`` (the copy embedder's published threshold if it has one,
    else calibrated from data), ``calibrated`` or a number set by the user.
    """
    if isinstance(config.copy_threshold, str):
        if config.copy_threshold == "auto" and copy_spec.copy_threshold is not None:
            return float(copy_spec.copy_threshold), "published"
        return None
    value = float(config.copy_threshold)
    if copy_spec.metric == "ip" and not -1.0 <= value <= 1.0:
        raise GanauditError(f"--copy-threshold {value:g}: {copy_spec.name} compares by cosine similarity, "
                            "so the threshold must lie in [-1, 1]")
    if copy_spec.metric == "l2" and value < 0:
        raise GanauditError(f"--copy-threshold {value:g}: {copy_spec.name} compares by distance, which is never negative")
    return value, "user"


def rank_key(copy_spec, config: AuditConfig) -> str:
    """What picks each sample's best variant: the quantity its flag is decided on."""
    if absolute_threshold(copy_spec, config) is None:
        return "score"
    return "similarity" if copy_spec.metric == "ip" else "distance"


def memorization_summary(gen: Matches, reference: Matches, calibration: dict, source, train,
                         config: AuditConfig, train_feats, holdout_feats, gen_feats, copy_spec) -> dict:
    """The ``memorization`` section: per-sample flags, leaked examples, dataset-level figures.

    A sample is flagged when its score is below the threshold calibrated on the reference
    scores; or, with an absolute threshold (``absolute_threshold``), when its cosine
    similarity is at least it (``ip`` copy embedders) or its distance at most it (``l2``).
    p-values always come from the reference scores.
    """
    absolute = absolute_threshold(copy_spec, config)
    calibration = calibration | {"score": f"d1 / mean(d2..d{config.copy_k + 1}) to the training set",
                                 "augmentations": gen.names}
    if absolute is None:
        try:
            threshold = copy_stats.calibrate_threshold(reference.score, config.alpha)
        except ValueError:
            need = int(np.ceil(1 / config.alpha)) - 1
            raise GanauditError(
                f"calibration has {len(reference.score)} reference images ({calibration['method']}); alpha={config.alpha:g} "
                f"needs at least {need}: give a larger --holdout or a larger --alpha"
            ) from None
        flagged = gen.score < threshold
        calibration["threshold_on"] = "score"
    else:
        threshold, origin = absolute
        on = "similarity" if copy_spec.metric == "ip" else "distance"
        flagged = gen.similarity >= threshold if on == "similarity" else gen.distance <= threshold
        calibration |= {"method": origin, "threshold_on": on, "p_value_reference": calibration["method"]}
        if origin == "published":
            calibration["threshold_source"] = copy_spec.copy_threshold_source
    p_values = copy_stats.empirical_p_values(gen.score, reference.score)
    significant = copy_stats.benjamini_hochberg(p_values, q=config.fdr_q)
    n, n_flagged = len(gen.score), int(flagged.sum())
    order = np.flatnonzero(flagged)[np.argsort(gen.score[flagged], kind="stable")]
    entries = [_flag_entry(i, gen, p_values, significant, source, train) for i in order]
    leaked = copy_stats.leaked_train_examples(gen.train_index[flagged], len(train))
    out = {
        "n_samples": n,
        "n_flagged": n_flagged,
        "flagged_fraction": n_flagged / n,
        "flagged_fraction_ci95": list(copy_stats.binomial_ci(n_flagged, n, 0.95)),
        "n_significant": int(significant.sum()),
        "fdr_q": config.fdr_q,
        "threshold": threshold,
        "alpha": config.alpha,
        "calibration": calibration,
        "flagged": entries,
        "leaked_train_examples": [{"train_index": int(t), "train_path": train.describe(int(t)), "count": int(c)}
                                  for t, c in leaked],
        "score_histogram": _histogram(gen.score, reference.score, threshold if absolute is None else None),
        "ct_statistic": None, "authenticity": None, "mia_auc": None,
    }
    out["authenticity"] = mem.authenticity(train_feats, gen_feats)
    if holdout_feats is not None:
        out.update(_holdout_metrics(train_feats, holdout_feats, gen_feats, config))
    return out, flagged


def _flag_entry(i: int, gen: Matches, p_values, significant, source, train) -> dict:
    t = int(gen.train_index[i])
    return {
        "sample_index": int(i), **source.describe(int(i)),
        "train_index": t, "train_path": train.describe(t),
        "score": float(gen.score[i]), "p_value": float(p_values[i]), "significant": bool(significant[i]),
        "distance": float(gen.distance[i]), "similarity": float(gen.similarity[i]),
        "augmentation": gen.names[int(gen.augmentation[i])],
    }


def _histogram(scores: np.ndarray, reference: np.ndarray, threshold: float | None) -> dict:
    high = float(np.quantile(np.concatenate([scores, reference]), 0.995)) or 1.0
    edges = np.linspace(0.0, high, HISTOGRAM_BINS + 1)
    gen_counts, _ = np.histogram(np.clip(scores, 0, high), edges)
    ref_counts, _ = np.histogram(np.clip(reference, 0, high), edges)
    return {"edges": edges.tolist(), "generated": (gen_counts / len(scores)).tolist(),
            "reference": (ref_counts / len(reference)).tolist(), "threshold": threshold}


def _holdout_metrics(train_feats, holdout_feats, gen_feats, config: AuditConfig) -> dict:
    n_cells = int(max(2, min(20, len(holdout_feats) // 25)))
    try:
        ct = mem.ct_statistic(train_feats, holdout_feats, gen_feats, n_cells, seed=config.seed)
    except ValueError as e:  # too few samples per cell: say so rather than guess
        log.warning("C_T not computed: %s", e)
        ct = None
    return {"ct_statistic": ct, "ct_cells": n_cells,
            "mia_auc": mem.mia_auc(train_feats, holdout_feats, gen_feats, seed=config.seed)}


def coverage_summary(train, train_feats: np.ndarray, gen_feats: np.ndarray, gen: Matches,
                     config: AuditConfig, class_logits: np.ndarray | None = None) -> dict:
    """The ``coverage`` section: PRDC, FD/KD, near-duplicates, modes, diversity, a sample grid.

    ``class_logits`` ``(M, C)`` of the generated samples give the Inception Score; only the
    ``inception`` embedder provides them, and the section says so otherwise.
    """
    rng = np.random.default_rng(config.seed)
    real_idx = np.arange(len(train_feats))
    if len(real_idx) > config.coverage_max_real:
        real_idx = np.sort(rng.choice(len(real_idx), config.coverage_max_real, replace=False))
    real = train_feats[real_idx]
    real_nn = cov.leave_one_out_nn_distances(real)
    fake_nn = cov.leave_one_out_nn_distances(gen_feats)
    dup_threshold = cov.collapse_threshold(None, 0.01, real_nn_distances=real_nn)
    out = cov.prdc(real, gen_feats, nearest_k=config.nearest_k)
    out.update(
        nearest_k=config.nearest_k, n_real=len(real),
        fd=fid.frechet_distance(real, gen_feats),
        kd=fid.kernel_distance(real, gen_feats, num_subsets=config.kid_subsets, seed=config.seed),
        kd_subsets=config.kid_subsets,
        duplicate_fraction=cov.duplicate_fraction(None, dup_threshold, fake_nn_distances=fake_nn),
        duplicate_threshold=dup_threshold,
        nn_distances=cov.nn_distance_summary(None, None, real_nn_distances=real_nn, fake_nn_distances=fake_nn),
        sample_grid=[{"sample_index": i, "train_index": int(gen.train_index[i])}
                     for i in range(min(SAMPLE_GRID, len(gen_feats)))],
    )
    out.update(_inception_score(class_logits, config.embedder))
    out["modes"], gen_labels = _modes(train, train_feats, gen_feats, config)
    out.update(_diversity(real, gen_feats, gen_labels, out["modes"], dup_threshold, config))
    return out


def _inception_score(class_logits, embedder_name: str) -> dict:
    if class_logits is None:
        return {"inception_score": None, "inception_score_std": None,
                "inception_score_note": f"needs --embedder inception (this run: {embedder_name})"}
    splits = min(10, len(class_logits))
    mean, std = inception_score(class_logits, splits=splits)
    return {"inception_score": mean, "inception_score_std": std, "inception_score_splits": splits}


def _diversity(real, gen_feats, gen_labels, modes_summary: dict, dup_threshold: float, config: AuditConfig) -> dict:
    """Vendi scores and birthday-paradox support size, each beside the training set's own figure."""
    rng = np.random.default_rng(config.seed + 1)
    real_same_size = real[rng.choice(len(real), min(len(real), len(gen_feats)), replace=False)]
    names = [row["name"] for row in modes_summary["per_mode"]]
    per_mode = diversity.vendi_per_mode(gen_feats, gen_labels) if len(gen_feats) > 1 else {}
    return {
        "vendi": diversity.vendi_score(gen_feats),
        "vendi_train": diversity.vendi_score(real_same_size),
        "vendi_per_mode": {names[int(k)]: v for k, v in per_mode.items()},
        "support_size": diversity.support_size(gen_feats, dup_threshold),
        "support_size_train": diversity.support_size(real_same_size, dup_threshold),
    }


def _modes(train, train_feats, gen_feats, config: AuditConfig) -> dict:
    if train.labels is not None and config.modes is None:
        source, names, train_labels = "labels", train.class_names, train.labels
        gen_labels = modes.knn_vote_labels(train_feats, train_labels, gen_feats, k=config.nearest_k)
    else:
        source = "kmeans"
        train_labels, centroids = modes.kmeans_modes(train_feats, n_modes=config.modes, seed=config.seed)
        gen_labels = nearest_centroid(gen_feats, centroids)
        names = [f"cluster {i}" for i in range(len(centroids))]
    summary = modes.mode_coverage(train_labels, gen_labels, len(names), names=names,
                                  min_share_ratio=config.mode_min_share_ratio)
    for row in summary["per_mode"]:
        members = np.flatnonzero(train_labels == row["mode"])[:4]
        row["examples"] = [{"train_index": int(t), "train_path": train.describe(int(t))} for t in members]
    return {"source": source, "min_share_ratio": config.mode_min_share_ratio, **summary}, gen_labels


def per_class_summary(gen_classes: np.ndarray, gen: Matches, flagged: np.ndarray, train, train_feats: np.ndarray,
                      gen_feats: np.ndarray, config: AuditConfig) -> tuple[list[dict], list[dict]]:
    """Per generated class: the flagged fraction, and PRDC against that class's training images.

    Class ``c`` of a conditional generator is taken to be training class ``c``: the c-th class
    folder in sorted order (torchvision's ImageFolder convention). PRDC needs more than
    ``nearest_k`` images on both sides and is left out of a class that has fewer.

    Returns:
        ``(memorization rows, coverage rows)``, one of each per class present among the samples.
    """
    mem_rows, cov_rows = [], []
    names = train.class_names
    for c in np.unique(gen_classes):
        mask = gen_classes == c
        n, n_flagged = int(mask.sum()), int(flagged[mask].sum())
        name = names[c] if c < len(names) else str(c)
        mem_rows.append({"class": int(c), "name": name, "n_samples": n, "n_flagged": n_flagged,
                         "flagged_fraction": n_flagged / n})
        row = {"class": int(c), "name": name, "n_samples": n}
        if train.labels is not None and c < len(names):
            real = train_feats[train.labels == c]
            if len(real) > config.nearest_k and n > config.nearest_k:
                row.update(cov.prdc(real, gen_feats[mask], nearest_k=config.nearest_k))
        cov_rows.append(row)
    return mem_rows, cov_rows
