"""The calls the audit, the gate and the outputs make into the review package.

Each is one line at its call site (listed in docs/review.md, "Where it plugs in"):

- ``annotate_memorization`` (audit, after the memorization section is built): content
  hashes, training classes and duplicates into ``flagged`` and ``leaked_train_examples``.
- ``gate_with_review`` (the audit's gate stage), which runs in turn ``apply_review`` (reads
  the review file and marks waived flags), ``ganaudit.gate.apply_gates`` with ``gate_view``
  (the result as the gates read it, waived flags not counted) and ``after_gates`` (says so in
  the gate messages; records the comparison with ``--baseline``).
- ``summary_lines`` (terminal summary) and ``model_card_output`` (outputs).
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from ganaudit.review import waivers as wv

log = logging.getLogger(__name__)


def annotate_memorization(memorization: dict, train, index, train_copy_feats, config) -> None:
    """Add ``train_sha256`` and ``train_class`` to flagged entries; hashes and duplicates to leaked ones.

    Args:
        memorization: the result's ``memorization`` section (changed in place).
        train: the training ImageSet.
        index: the training index copy search used; ``train_copy_feats`` ``(N, D)`` its features.
        config: the AuditConfig (its ``copy_k``).
    """
    from ganaudit.review.content import train_image_hashes
    from ganaudit.review.evidence import train_duplicates

    leaked = memorization["leaked_train_examples"]
    duplicates = train_duplicates(index, train_copy_feats, [e["train_index"] for e in leaked],
                                  memorization["calibration"].get("threshold_on", "score"),
                                  float(memorization["threshold"]), config.copy_k)
    needed = {e["train_index"] for e in memorization["flagged"]} | set(duplicates)
    needed |= {j for found, _ in duplicates.values() for j in found}
    hashes = train_image_hashes(train, needed)
    for entry in memorization["flagged"]:
        t = entry["train_index"]
        entry["train_sha256"] = hashes[t]
        entry["train_class"] = train.class_names[int(train.labels[t])] if train.labels is not None else None
    for entry in leaked:
        t = entry["train_index"]
        found, truncated = duplicates[t]
        entry["train_sha256"] = hashes[t]
        entry["duplicates"] = [{"train_index": j, "train_path": train.describe(j)["path"], "train_sha256": hashes[j],
                                "same_content": hashes[j] == hashes[t]} for j in found]
        entry["duplicates_truncated"] = truncated


def gate_with_review(result, config, baseline=None, today: dt.date | None = None) -> None:
    """The gate stage: read the review file, evaluate the gates on the flags it does not
    waive (``ganaudit.gate.apply_gates`` with :func:`gate_view`), then note the waivers in
    the gate messages and record the comparison with ``baseline``."""
    from ganaudit import gate

    apply_review(result, config, today)
    gate.apply_gates(result, config.gates, config.warn_only, baseline, config.baseline, config.baseline_rules,
                     view=gate_view)
    after_gates(result, baseline)


def apply_review(result, config, today: dt.date | None = None) -> None:
    """Set ``result.review`` from the review file (``config.review_file`` or the one found), or None."""
    from ganaudit.plumbing import file_sha256

    path = wv.find_review_file(getattr(config, "review_file", None), Path())
    if path is None:
        result.review = None
        return
    waivers = wv.read_review_file(path)
    result.review = wv.apply_waivers(result.memorization, waivers, today or dt.date.today(), str(path),
                                     file_sha256(path))
    log.info("review file %s: %d waivers, %d flags waived", path, len(waivers), result.review["n_waived"])


def check_review_file(config) -> None:
    """Parse the review file before the audit runs, so a mistake in it costs no audit."""
    path = wv.find_review_file(getattr(config, "review_file", None), Path())
    if path is not None:
        wv.read_review_file(path)


def gate_view(snapshot: dict) -> dict:
    """``snapshot`` (a result dict) with the figures waivers change replaced by the counted ones."""
    review = snapshot.get("review")
    if not review:
        return snapshot
    memorization = dict(snapshot["memorization"])
    memorization.update({k: review["counted"][k] for k in wv.COUNTED_METRICS})
    return {**snapshot, "memorization": memorization}


def after_gates(result, baseline) -> None:
    """Say in each affected gate's message that waivers applied; record the baseline comparison."""
    review = result.review
    if review:
        affected = {f"memorization.{k}" for k in wv.COUNTED_METRICS}
        note = (f" after waivers ({review['n_waived']} of {result.memorization['n_flagged']} flags waived "
                f"by {Path(review['file']).name})")
        for row in result.gates:
            if row.get("metric") in affected and row.get("status") != "skipped":
                row["message"] += note
    if baseline is not None:
        from ganaudit.review.compare import compare_results

        result.baseline["comparison"] = compare_results(baseline.to_dict(), result.to_dict())


def summary_lines(result) -> list[str]:
    """Lines for the terminal summary: the review file, waived flags, each stale waiver."""
    review = getattr(result, "review", None)
    if not review:
        return []
    counted = review["counted"]
    lines = [f"  review    {review['file']}: {review['n_waivers']} waiver(s), {review['n_waived']} of "
             f"{result.memorization['n_flagged']} flags waived; the gate counts {counted['n_flagged']} "
             f"({counted['flagged_fraction']:.1%}); {review['n_stale']} stale"]
    for row in review["waivers"]:
        if row["status"] != "active":
            lines.append(f"  STALE waiver {row['number']} ({row['train_path'] or row['train_sha256'][:12]}, "
                         f"{row['reviewer']}): {row['stale_reason']}")
    return lines


def model_card_output(result, config) -> tuple[Path, str] | None:
    """``(path, text)`` of the model card when ``config.model_card`` is set."""
    path = getattr(config, "model_card", None)
    if path is None:
        return None
    from ganaudit.review.model_card import render_model_card

    return Path(path), render_model_card(result)
