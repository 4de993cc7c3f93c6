"""Findings: the result's ``memorization`` and ``coverage`` sections, built from the evidence.

The numbers come from the pure functions in :mod:`ganaudit.metrics`; these modules pick
their inputs (subsets, seeds), name the outputs as the JSON contract does, and add what a
reader needs to check them (paths, seeds, histograms). They read no images and write nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Evidence:
    """What the search stage leaves behind for the findings (no images are kept).

    Attributes:
        train: the training set (``ImageSet``): its labels, class names and paths.
        source: the generated samples (an ``ImageSource``): how each is named.
        train_features: ``(N, D)`` float32 training features under the audit's embedder.
        generated: the searched samples (``search.copy_search.SearchedSet``): features,
            matches and class labels.
        reference: the calibration's reference (``search.calibration.Reference``); its
            ``features`` are the holdout's, when there is one.
        flags: the decision on every sample (``search.calibration.Flags``).
    """

    train: Any
    source: Any
    train_features: np.ndarray
    generated: Any
    reference: Any
    flags: Any


def sample_fields(described: dict) -> dict:
    """The flagged entry's fields naming a sample: ``sample_path`` for a file, ``seed`` for a latent."""
    return {f"sample_{k}" if k == "path" else k: v for k, v in described.items()}
