"""The ``coverage`` section: PRDC, FD/KD, near-duplicates, modes, diversity, a sample grid."""
from __future__ import annotations

import numpy as np

from ganaudit.config import AuditConfig
from ganaudit.features import take_rows
from ganaudit.findings import Evidence
from ganaudit.metrics import coverage as cov, diversity, fid, modes
from ganaudit.metrics.clustering import nearest_centroid
from ganaudit.metrics.inception_score import inception_score

SAMPLE_GRID = 24


def coverage_section(evidence: Evidence, config: AuditConfig, class_logits: np.ndarray | None = None) -> dict:
    """The ``coverage`` section: PRDC, FD/KD, near-duplicates, modes, diversity, a sample grid.

    ``class_logits`` ``(M, C)`` of the generated samples give the Inception Score; only the
    ``inception`` embedder provides them, and the section says so otherwise.
    """
    train, train_feats = evidence.train, evidence.train_features
    gen_feats, gen = evidence.generated.features, evidence.generated.matches
    rng = np.random.default_rng(config.seed)
    real_idx = np.arange(len(train_feats))
    if len(real_idx) > config.coverage_max_real:
        real_idx = np.sort(rng.choice(len(real_idx), config.coverage_max_real, replace=False))
    real = take_rows(train_feats, real_idx)  # the subsample in memory; a memory map read span by span
    n_real, n_gen, k = len(real), len(gen_feats), config.nearest_k
    # What each figure needs (training and generated rows); a figure short of it is null, with the reason.
    needs = {"prdc": (k + 1, k + 1), "fd": (2, 2), "kd": (2, 2), "duplicate_fraction": (2, 2)}
    not_computed = {name: f"needs at least {r} training and {g} generated samples (has {n_real} and {n_gen})"
                    for name, (r, g) in needs.items() if n_real < r or n_gen < g}
    real_nn = cov.leave_one_out_nn_distances(real)
    fake_nn = cov.leave_one_out_nn_distances(gen_feats) if n_gen >= 2 else None
    dup_threshold = cov.collapse_threshold(None, 0.01, real_nn_distances=real_nn)
    prdc = (cov.prdc(real, gen_feats, nearest_k=k) if "prdc" not in not_computed
            else dict.fromkeys(("precision", "recall", "density", "coverage")))
    out = {
        **prdc, "nearest_k": k, "n_real": n_real,
        "fd": None if "fd" in not_computed else fid.frechet_distance(real, gen_feats),
        "kd": None if "kd" in not_computed else fid.kernel_distance(real, gen_feats, num_subsets=config.kid_subsets,
                                                                     seed=config.seed),
        "kd_subsets": config.kid_subsets,
        "duplicate_fraction": None if fake_nn is None else cov.duplicate_fraction(None, dup_threshold,
                                                                                  fake_nn_distances=fake_nn),
        "duplicate_threshold": dup_threshold,
        "nn_distances": None if fake_nn is None else cov.nn_distance_summary(
            None, None, real_nn_distances=real_nn, fake_nn_distances=fake_nn),
        "sample_grid": [{"sample_index": i, "train_index": int(gen.train_index[i])} for i in range(min(SAMPLE_GRID, n_gen))],
    }
    if not_computed:
        out["not_computed"] = not_computed
    out.update(_inception_score(class_logits, config.embedder))
    out["modes"], gen_labels = _modes(train, train_feats, gen_feats, config, evidence.reference.features)
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
    assigned = gen_labels != modes.UNASSIGNED  # unassigned samples belong to no mode's Vendi score
    per_mode = diversity.vendi_per_mode(gen_feats[assigned], gen_labels[assigned]) if assigned.sum() > 1 else {}
    return {
        "vendi": diversity.vendi_score(gen_feats),
        "vendi_train": diversity.vendi_score(real_same_size),
        "vendi_per_mode": {names[int(k)]: v for k, v in per_mode.items()},
        "support_size": diversity.support_size(gen_feats, dup_threshold) if len(gen_feats) > 1 else None,
        "support_size_train": diversity.support_size(real_same_size, dup_threshold) if len(real_same_size) > 1 else None,
    }


def _modes(train, train_feats, gen_feats, config: AuditConfig, holdout_feats=None) -> tuple[dict, np.ndarray]:
    """Modes and how the samples spread over them, counted from confident assignments only.

    With class labels, the reference of the confidence rule is leave-one-out training images
    (the holdout's labels are not carried to the findings, and its class folders need not
    match the training set's). With k-means modes, a holdout's features are labelled by their
    nearest centroid and used as the reference; without a holdout, leave-one-out training images.
    """
    if train.labels is not None and config.modes is None:
        source, names, train_labels = "labels", train.class_names, train.labels
        reference = {}
    else:
        source = "kmeans"
        train_labels, centroids = modes.kmeans_modes(train_feats, n_modes=config.modes, seed=config.seed)
        names = [f"cluster {i}" for i in range(len(centroids))]
        reference = ({} if holdout_feats is None else
                     {"reference_features": holdout_feats,
                      "reference_labels": nearest_centroid(holdout_feats, centroids)})
    gen_labels, assignment = modes.confident_modes(
        train_feats, train_labels, gen_feats, len(names), k=min(config.nearest_k, len(train_feats)),
        min_share_ratio=config.mode_min_share_ratio, seed=config.seed, **reference)
    summary = modes.mode_coverage(train_labels, gen_labels, len(names), names=names,
                                  min_share_ratio=config.mode_min_share_ratio)
    for row in summary["per_mode"]:
        members = np.flatnonzero(train_labels == row["mode"])[:4]
        row["examples"] = [{"train_index": int(t), "train_path": train.describe(int(t))["path"]} for t in members]
    n = len(gen_labels)
    summary["unassigned_fraction"] = summary["n_unassigned"] / n if n else 0.0
    return {"source": source, "min_share_ratio": config.mode_min_share_ratio, **summary,
            "assignment": assignment}, gen_labels
