"""The ``memorization`` section: flagged samples, leaked training images, dataset-level figures."""
from __future__ import annotations

import logging

import numpy as np

from ganaudit.config import AuditConfig
from ganaudit.findings import Evidence, sample_fields
from ganaudit.metrics import copy_stats, memorization as mem

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 40


def memorization_section(evidence: Evidence, config: AuditConfig) -> dict:
    """Per-sample flags (most copy-like first), the training images they copy, C_T,
    authenticity and the membership-inference AUC (the last two need a holdout set)."""
    gen, flags, train = evidence.generated.matches, evidence.flags, evidence.train
    flagged = flags.flagged
    n, n_flagged = len(gen.score), int(flagged.sum())
    order = np.flatnonzero(flagged)[np.argsort(gen.score[flagged], kind="stable")]
    leaked = copy_stats.leaked_train_examples(gen.train_index[flagged], len(train))
    calibrated = flags.calibration["threshold_on"] == "score"
    out = {
        "n_samples": n,
        "n_flagged": n_flagged,
        "flagged_fraction": n_flagged / n,
        "flagged_fraction_ci95": list(copy_stats.binomial_ci(n_flagged, n, 0.95)),
        "n_significant": int(flags.significant.sum()),
        "fdr_q": config.fdr_q,
        "threshold": flags.threshold,
        "alpha": config.alpha,
        "calibration": flags.calibration,
        "flagged": [_flag_entry(int(i), evidence) for i in order],
        "leaked_train_examples": [{"train_index": int(t), "train_path": train.describe(int(t))["path"], "count": int(c)}
                                  for t, c in leaked],
        "score_histogram": _histogram(gen.score, evidence.reference.matches.score,
                                      flags.threshold if calibrated else None),
        "ct_statistic": None, "authenticity": None, "mia_auc": None,
    }
    gen_feats, holdout_feats = evidence.generated.features, evidence.reference.features
    out["authenticity"] = mem.authenticity(evidence.train_features, gen_feats)
    if holdout_feats is not None:
        out.update(_holdout_metrics(evidence.train_features, holdout_feats, gen_feats, config.seed))
    return out


def _flag_entry(i: int, evidence: Evidence) -> dict:
    gen, flags = evidence.generated.matches, evidence.flags
    t = int(gen.train_index[i])
    return {
        "sample_index": i, **sample_fields(evidence.source.describe(i)),
        "train_index": t, "train_path": evidence.train.describe(t)["path"],
        "score": float(gen.score[i]), "p_value": float(flags.p_values[i]), "significant": bool(flags.significant[i]),
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


def _holdout_metrics(train_feats, holdout_feats, gen_feats, seed: int) -> dict:
    n_cells = int(max(2, min(20, len(holdout_feats) // 25)))
    try:
        ct = mem.ct_statistic(train_feats, holdout_feats, gen_feats, n_cells, seed=seed)
    except ValueError as e:  # too few samples per cell: say so rather than guess
        log.warning("C_T not computed: %s", e)
        ct = None
    return {"ct_statistic": ct, "ct_cells": n_cells,
            "mia_auc": mem.mia_auc(train_feats, holdout_feats, gen_feats, seed=seed)}
