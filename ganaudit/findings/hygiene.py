"""The ``memorization.hygiene`` section: findings about the data itself (``ganaudit.search.hygiene``).

Reference images that duplicate training images (excluded from calibration, listed as
pairs), duplicate groups inside the training set, and the low-information images of each set.
"""
from __future__ import annotations

import numpy as np

from ganaudit.search import hygiene


def hygiene_section(train, holdout, searched_reference, counts: dict, groups: hygiene.DuplicateGroups,
                    train_low: np.ndarray, generated_low: np.ndarray, n_withheld: int,
                    published_similarity: float | None) -> dict:
    """The section (its JSON shape is ``memorization.hygiene`` in the schema).

    Args:
        train, holdout: the image sets (``describe`` gives paths); holdout may be None.
        searched_reference: every reference image searched (``calibration.Reference``).
        counts: ``calibration.clean_reference``'s counts, with its ``near_duplicate`` mask.
        groups: the training set's duplicate groups.
        train_low, generated_low: ``(N,)`` and ``(M,)`` bool, low-information images.
        n_withheld: generated samples that would have been flagged but are low-information.
    """
    def describe_reference(kind: str, i: int) -> str:
        return (holdout if kind == "holdout" else train).describe(i)["path"]

    pairs = hygiene.reference_pairs(searched_reference, counts["near_duplicate"], describe_reference,
                                    lambda t: train.describe(t)["path"])
    origin = searched_reference.origin
    dup = counts["near_duplicate"]
    listed = groups.groups[: hygiene.MAX_GROUPS]
    low_ref = (hygiene.low_information(searched_reference.contrast) if searched_reference.contrast is not None
               else np.zeros(len(dup), bool))
    return {
        "criterion": hygiene.criterion(published_similarity),
        "reference": {
            "n_searched": counts["n_searched"],
            "n_near_duplicates": counts["n_near_duplicates"],
            "n_near_duplicates_holdout": int((dup & (origin == "holdout")).sum()),
            "n_near_duplicates_train": int((dup & (origin == "train")).sum()),
            "n_low_information": counts["n_low_information"],
            "n_kept": counts["n_kept"],
            "low_information_kept": counts["low_information_kept"],
            "near_duplicate_fraction_holdout": (float((dup & (origin == "holdout")).sum() / (origin == "holdout").sum())
                                                if (origin == "holdout").any() else None),
            "pairs": pairs,
            "pairs_truncated": counts["n_near_duplicates"] > len(pairs),
        },
        "train_duplicates": {
            "n_groups": len(groups.groups),
            "n_images": groups.n_images,
            "n_searched": groups.n_searched,
            "groups": [{"size": len(g), "members": [{"train_index": int(t), "train_path": train.describe(int(t))["path"]}
                                                   for t in g]} for g in listed],
            "groups_truncated": len(groups.groups) > len(listed),
        },
        "low_information": {
            "n_train": int(np.sum(train_low)),
            "n_reference": int(low_ref.sum()),
            "n_generated": int(np.sum(generated_low)),
            "n_flags_withheld": int(n_withheld),
        },
    }
