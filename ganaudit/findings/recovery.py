"""The result's ``recovery`` section: latent recovery of training and held-out images (``--recover N``).

``N`` training and ``N`` held-out images are picked with the audit's seed; for each the
latent whose generated image reconstructs it best is searched (``ganaudit.search.recovery``);
the reconstruction distances give the train-versus-holdout AUC with its interval, and each
training image is flagged against the held-out distances (``ganaudit.metrics.recovery``).
A source that cannot be optimised through (a samples folder, a generator without gradients,
a conditional one) gives a section with ``status: "skipped"`` and a note, not an error.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ganaudit.metrics import copy_stats
from ganaudit.metrics.copy_stats import cosine_to_distance
from ganaudit.metrics.recovery import auc_confidence_interval, min_reference_for, recovery_auc, recovery_flags
from ganaudit.progress import progress_bar

log = logging.getLogger(__name__)

BLOCK = 512  # targets loaded and recovered at a time (memory: BLOCK images, not N)
SHOWN = 12  # most recoverable training images whose latents the result keeps (the report's table)
DISTANCE = "root-mean-square pixel error in [0, 1] units at the generator's resolution"


def skipped(note: str, requested: int) -> dict:
    """The section of an audit whose source cannot be recovered: why, and nothing else."""
    return {"status": "skipped", "note": note, "requested": requested, "auc": None, "auc_ci95": None,
            "auc_descriptor": None, "auc_descriptor_ci95": None, "n_flagged": None, "flagged_fraction": None,
            "train": [], "holdout": []}


def pick(n_images: int, n: int, seed: int, stream: int) -> np.ndarray:
    """``min(n, n_images)`` sorted indices, seeded by ``[seed, stream]`` (0: training set, 1: holdout)."""
    rng = np.random.default_rng([seed, 17, stream])
    return np.sort(rng.choice(n_images, size=min(n, n_images), replace=False))


def recovery_section(source, train, holdout, copy_embedder, config, device) -> tuple[dict, dict]:
    """The ``recovery`` section and the reconstructions the report shows (``{train_index: (3, H, W)}``)."""
    from ganaudit.search.recovery import LatentRecovery, Recovered, RecoverySettings, gradient_problem

    requested = config.recover
    if getattr(source, "kind", None) != "generator":
        return skipped("latent recovery needs a generator to optimise through; a samples folder has none", requested), {}
    generator = source.generator
    problem = gradient_problem(generator)
    if problem is not None:
        fmt = generator.info.get("format", "?")
        return skipped(f"latent recovery not run: {problem} ({fmt} generator)", requested), {}
    started = time.perf_counter()
    train_idx = pick(len(train), requested, config.seed, 0)
    holdout_idx = pick(len(holdout), requested, config.seed, 1)
    keys = np.r_[2 * train_idx, 2 * holdout_idx + 1]
    images = [(train, int(i)) for i in train_idx] + [(holdout, int(j)) for j in holdout_idx]
    settings = RecoverySettings(config.recover_steps, config.recover_restarts, config.recover_lr, config.seed)
    chunk = max(1, config.batch_size // settings.restarts)  # latents per batch ~ --batch-size
    distance, latents, restart, descriptor = [], [], [], []
    bar = progress_bar(len(keys) * settings.steps, "latent recovery", config.progress)
    try:
        recovery = LatentRecovery(generator, settings, on_step=bar.update)
        for start in range(0, len(keys), BLOCK):  # only a block of targets in memory at a time
            targets = _fit(torch.stack([s.load(i) for s, i in images[start:start + BLOCK]]), recovery.size)
            found = recovery.recover(targets, keys[start:start + BLOCK], chunk)
            recon = recovery.reconstruct(found.latents, config.batch_size)
            distance.append(found.distance)
            latents.append(found.latents)
            restart.append(found.restart)
            descriptor.append(_descriptor_distance(copy_embedder, targets, recon))
    finally:
        bar.close()
    found = Recovered(np.concatenate(distance), np.concatenate(latents), np.concatenate(restart))
    descriptor = np.concatenate(descriptor)
    seconds = time.perf_counter() - started
    m = len(train_idx)
    figures, flags = _figures(found.distance[:m], found.distance[m:], descriptor[:m], descriptor[m:], config)
    section = {"status": "done", "note": None, "requested": requested, **figures}
    order = np.argsort(found.distance[:m], kind="stable")
    section["train"] = [
        {"train_index": int(train_idx[p]), "train_path": train.describe(int(train_idx[p]))["path"],
         "distance": float(found.distance[p]), "descriptor_distance": float(descriptor[p]),
         "p_value": float(flags["p_values"][p]), "flagged": bool(flags["flagged"][p]),
         "significant": bool(flags["significant"][p]),
         "restart": int(found.restart[p]),
         **({"latent": found.latents[p].tolist()} if rank < SHOWN else {})}
        for rank, p in enumerate(order)]
    section["holdout"] = [
        {"holdout_index": int(j), "holdout_path": holdout.describe(int(j))["path"],
         "distance": float(found.distance[m + q]), "descriptor_distance": float(descriptor[m + q])}
        for q, j in enumerate(holdout_idx)]
    notes = []
    if m < requested or len(holdout_idx) < requested:
        notes.append(f"--recover {requested}: the training set has {len(train)} and the holdout {len(holdout)} "
                     f"images, so {m} and {len(holdout_idx)} were recovered")
    if section["threshold"] is None:
        notes.append(f"{len(holdout_idx)} held-out images cannot calibrate alpha {config.alpha:g} (needs "
                     f"{min_reference_for(config.alpha)}): no image is flagged; give a larger --recover or --alpha")
    section.update(
        note="; ".join(notes) or None, distance=DISTANCE, copy_embedder=copy_embedder.spec.name,
        steps=settings.steps, restarts=settings.restarts, lr=settings.lr, seed=settings.seed,
        output_size=list(recovery.size), device=str(device), seconds=round(seconds, 3),
        ms_per_image_restart=round(1000 * seconds / (len(keys) * settings.restarts), 2),
    )
    best = order[:SHOWN]
    shown = dict(zip((int(train_idx[p]) for p in best), recovery.reconstruct(found.latents[best], config.batch_size)))
    return section, shown


def _fit(targets: torch.Tensor, size) -> torch.Tensor:
    from ganaudit.search.recovery import fit_to

    return fit_to(targets.float(), size)


def _descriptor_distance(embedder, targets: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
    """Distance between each target and its reconstruction in the copy descriptor's metric
    (``sqrt(2 - 2 cos)`` for cosine descriptors, Euclidean otherwise)."""
    a, b = embedder.embed(targets), embedder.embed(recon)
    if embedder.spec.metric == "ip":
        if not embedder.spec.l2_normalized:
            a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return cosine_to_distance((a.astype(np.float64) * b).sum(axis=1))
    return np.linalg.norm(a.astype(np.float64) - b, axis=1)


def _figures(train_d, holdout_d, train_desc, holdout_desc, config) -> tuple[dict, dict]:
    m, n = len(train_d), len(holdout_d)
    auc = recovery_auc(train_d, holdout_d)
    auc_desc = recovery_auc(train_desc, holdout_desc)
    flags = recovery_flags(train_d, holdout_d, config.alpha, config.fdr_q)
    n_flagged = int(flags["flagged"].sum())
    return {
        "n_train": m, "n_holdout": n,
        "auc": auc, "auc_ci95": list(auc_confidence_interval(auc, m, n)),
        "auc_descriptor": auc_desc, "auc_descriptor_ci95": list(auc_confidence_interval(auc_desc, m, n)),
        "alpha": config.alpha, "threshold": flags["threshold"],
        "n_flagged": n_flagged, "flagged_fraction": n_flagged / m,
        "flagged_fraction_ci95": list(copy_stats.binomial_ci(n_flagged, m, 0.95)),
        "n_significant": int(flags["significant"].sum()), "fdr_q": config.fdr_q,
        "train_median_distance": float(np.median(train_d)), "holdout_median_distance": float(np.median(holdout_d)),
    }, flags
