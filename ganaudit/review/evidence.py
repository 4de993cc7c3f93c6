"""Evidence per leaked training image: what the audit holds against each one.

Two halves:

- At audit time, ``train_duplicates`` finds each leaked training image's duplicates within
  the training set: searched against the training index (leave-one-out, no test-time
  augmentation), a training image is a duplicate of image ``t`` when it would be flagged as a
  copy of ``t`` by the audit's own rule. With a calibrated threshold on the score
  ``d1 / mean(d2..d(k+1))`` the rule is applied to the run of nearest neighbours: the r-th
  neighbour is a duplicate while ``d_r / mean(d_(r+1)..d_(r+k))`` stays under the threshold
  (so two copies of ``t`` do not hide each other); with an absolute threshold, every
  neighbour within it. Byte-identical duplicates are at distance 0 and always found; at the
  audit's false-positive rate α a training image has a chance duplicate too.
- From a result alone (so a saved JSON renders the same), ``evidence_table`` gathers for
  each leaked image its hits, the best few, its duplicates and its waivers, sorted by
  evidence: most samples first, then the smallest p-value, then the smallest score.
"""
from __future__ import annotations

import numpy as np

MAX_DUPLICATES = 20  # duplicates listed per leaked training image (the search asks for this many more)
BEST_HITS = 3


def duplicate_run(dist: np.ndarray, sim: np.ndarray | None, on: str, threshold: float, k: int,
                  limit: int = MAX_DUPLICATES) -> int:
    """How many of the nearest neighbours of a training image are its duplicates.

    Args:
        dist: ``(K,)`` ascending Euclidean distances to the nearest other training images.
        sim: ``(K,)`` cosine similarities (inner-product indexes) or None.
        on: ``"score"``, ``"similarity"`` or ``"distance"``: what the audit's threshold is on.
        threshold: the audit's threshold (``memorization.threshold``).
        k: neighbours the score's mean runs over (the audit's ``copy_k``).
        limit: stop counting here.

    Returns:
        The length of the leading run of neighbours that pass the rule (module docstring).
    """
    n = 0
    while n < min(limit, len(dist)):
        if on == "similarity":
            ok = sim is not None and sim[n] >= threshold
        elif on == "distance":
            ok = dist[n] <= threshold
        else:
            following = dist[n + 1 : n + 1 + k]
            if len(following) == 0:
                break
            mean = float(np.mean(following))
            ok = (dist[n] / mean if mean > 0 else 0.0) < threshold
        if not ok:
            break
        n += 1
    return n


def train_duplicates(index, train_copy_feats: np.ndarray, train_indices, on: str, threshold: float,
                     copy_k: int) -> dict[int, tuple[list[int], bool]]:
    """Each listed training image's duplicates within the training set.

    Args:
        index: the audit's training index (``FlatIndex`` or ``ApproxIndex``; ``metric`` "l2"/"ip").
        train_copy_feats: ``(N, D)`` float32 copy features the index was built from.
        train_indices: the training images to look at (the leaked ones).
        on, threshold, copy_k: the audit's flag rule (see ``duplicate_run``).

    Returns:
        ``{t: ([duplicate indices, nearest first], truncated)}``; ``truncated`` when
        ``MAX_DUPLICATES`` were found and more may exist.
    """
    from ganaudit.metrics.copy_stats import cosine_to_distance

    wanted = np.asarray(sorted({int(t) for t in train_indices}), dtype=np.int64)
    n_total = int(index.ntotal)
    if wanted.size == 0 or n_total < 3:
        return {int(t): ([], False) for t in wanted}
    k = max(1, min(copy_k, n_total - 2))
    n_search = min(MAX_DUPLICATES + k, n_total - 1)
    raw, idx = index.search(train_copy_feats[wanted], n_search, exclude=wanted)
    dist = cosine_to_distance(raw) if index.metric == "ip" else raw
    sims = raw if index.metric == "ip" else None
    out = {}
    for row, t in enumerate(wanted):
        valid = np.isfinite(dist[row])  # approximate indexes give missing neighbours an infinite distance
        n = duplicate_run(dist[row][valid], None if sims is None else sims[row][valid], on, threshold, k)
        out[int(t)] = ([int(j) for j in idx[row][valid][:n]], n == MAX_DUPLICATES)
    return out


def evidence_table(result: dict, best: int = BEST_HITS) -> list[dict]:
    """One row per leaked training image, sorted by evidence (module docstring).

    Args:
        result: ``AuditResult.to_dict()``.
        best: how many of the strongest hits to keep per image.

    Returns:
        Rows with ``train_index``, ``train_path``, ``train_sha256`` (or None), ``train_class``,
        ``n_hits``, ``n_significant``, ``min_p_value``, ``min_score``, ``best`` (flagged
        entries), ``duplicates``, ``duplicates_truncated``, ``n_waived``, ``waived``
        (``"all"``, ``"some"`` or ``"none"``), ``waivers`` (numbers) and ``snippet_entry`` (an
        entry to build its any-sample waiver from).
    """
    mem = result["memorization"]
    hits: dict[int, list[dict]] = {}
    for entry in mem.get("flagged", []):
        hits.setdefault(int(entry["train_index"]), []).append(entry)
    rows = [_row(leaked, hits.get(int(leaked["train_index"]), []), best)
            for leaked in mem.get("leaked_train_examples", [])]
    rows.sort(key=lambda r: (-r["n_hits"], r["min_p_value"], r["min_score"], r["train_index"]))
    return rows


def _row(leaked: dict, hits: list[dict], best: int) -> dict:
    strongest = sorted(hits, key=lambda e: (e["p_value"], e["score"], e["sample_index"]))
    waived = [e for e in hits if e.get("waived_by") is not None]
    first = strongest[0] if strongest else {}
    return {
        "train_index": int(leaked["train_index"]), "train_path": leaked["train_path"],
        "train_sha256": leaked.get("train_sha256"), "train_class": first.get("train_class"),
        "n_hits": len(hits), "n_significant": sum(bool(e.get("significant")) for e in hits),
        "min_p_value": first.get("p_value", 1.0), "min_score": first.get("score", float("inf")),
        "best": strongest[:best],
        "duplicates": leaked.get("duplicates", []), "duplicates_truncated": leaked.get("duplicates_truncated", False),
        "n_waived": len(waived),
        "waived": "all" if hits and len(waived) == len(hits) else "some" if waived else "none",
        "waivers": sorted({int(e["waived_by"]) for e in waived}),
        "snippet_entry": {"train_sha256": leaked.get("train_sha256"), "train_path": leaked["train_path"]},
    }


def evidence_sample_indices(result: dict, rows: int, best: int = BEST_HITS) -> set[int]:
    """Sample indices of the best hits of the first ``rows`` evidence rows (the report shows them)."""
    return {int(e["sample_index"]) for row in evidence_table(result, best)[:rows] for e in row["best"]}
