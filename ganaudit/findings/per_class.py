"""Per-class rows of a conditional generator (or a labelled sample folder): flags and PRDC."""
from __future__ import annotations

import numpy as np

from ganaudit.config import AuditConfig
from ganaudit.features import take_rows
from ganaudit.findings import Evidence
from ganaudit.metrics import coverage as cov


def per_class_sections(evidence: Evidence, config: AuditConfig) -> tuple[list[dict], list[dict]]:
    """Per generated class: the flagged fraction, and PRDC against that class's training images.

    Class ``c`` of a conditional generator is taken to be training class ``c``: the c-th class
    folder in sorted order (torchvision's ImageFolder convention). PRDC needs more than
    ``nearest_k`` images on both sides and is left out of a class that has fewer; a class of
    more than ``coverage_max_real`` training images is subsampled to that many (seeded; the
    row's ``n_real``), as the whole set's PRDC is, so memory and time do not grow with it.

    Returns:
        ``(memorization rows, coverage rows)``, one of each per class present among the samples.
    """
    gen_classes, flagged = evidence.generated.class_labels, evidence.flags.flagged
    train, train_feats, gen_feats = evidence.train, evidence.train_features, evidence.generated.features
    mem_rows, cov_rows = [], []
    names = train.class_names
    rng = np.random.default_rng([config.seed, 29])
    for c in np.unique(gen_classes):
        mask = gen_classes == c
        n, n_flagged = int(mask.sum()), int(flagged[mask].sum())
        name = names[c] if c < len(names) else str(c)
        mem_rows.append({"class": int(c), "name": name, "n_samples": n, "n_flagged": n_flagged,
                         "flagged_fraction": n_flagged / n})
        row = {"class": int(c), "name": name, "n_samples": n}
        if train.labels is not None and c < len(names):
            members = np.flatnonzero(train.labels == c)
            if len(members) > config.coverage_max_real:  # capped as the whole set's PRDC is
                members = np.sort(rng.choice(members, config.coverage_max_real, replace=False))
            if len(members) > config.nearest_k and n > config.nearest_k:
                real = take_rows(train_feats, members)  # a memory map read span by span
                row.update(cov.prdc(real, gen_feats[mask], nearest_k=config.nearest_k), n_real=len(members))
        cov_rows.append(row)
    return mem_rows, cov_rows
