"""What the report's review partials need beyond the result: rows to filter, snippets, evidence.

``review.html.j2`` lists every flagged pair (up to ``MAX_LISTED``) with the waiver snippet
to paste into the review file; ``evidence.html.j2`` lists the leaked training images by
evidence. Both are rendered from the result alone.
"""
from __future__ import annotations

from ganaudit.review.evidence import evidence_sample_indices, evidence_table
from ganaudit.review.waivers import REVIEW_FILE_NAME, waiver_snippet

MAX_LISTED = 1000  # flagged pairs listed in the report (all of them are in result.json)
MAX_EVIDENCE = 200  # leaked training images listed
MAX_EVIDENCE_IMAGES = 12  # evidence rows whose pictures (training image, best hits) are rendered


def augmentation_kind(name: str) -> str:
    """The augmentation family of a variant name: ``"shift(+1,-2)"`` → ``"shift"``."""
    return name.split("(", 1)[0]


def flag_rows(r: dict) -> list[dict]:
    """The flagged entries as the review list shows them, in the result's order (by score)."""
    hits: dict[int, int] = {}
    for entry in r["memorization"]["flagged"]:
        hits[entry["train_index"]] = hits.get(entry["train_index"], 0) + 1
    rows = []
    for order, entry in enumerate(r["memorization"]["flagged"][:MAX_LISTED]):
        rows.append({"entry": entry, "order": order, "kind": augmentation_kind(entry["augmentation"]),
                     "train_class": entry.get("train_class") or "", "count": hits[entry["train_index"]],
                     "waived": entry.get("waived_by") is not None, "snippet": waiver_snippet(entry)})
    return rows


def review_context(r: dict) -> dict:
    """Template variables of the review partials for the result dict ``r``."""
    rows = flag_rows(r)
    evidence = evidence_table(r)[:MAX_EVIDENCE]
    for row in evidence:
        row["snippet"] = waiver_snippet(row["snippet_entry"], any_sample=True)
    waivers = {w["number"]: w for w in (r.get("review") or {}).get("waivers", [])}
    return {
        "flag_rows": rows, "max_listed": MAX_LISTED, "evidence": evidence, "max_evidence": MAX_EVIDENCE,
        "max_evidence_images": MAX_EVIDENCE_IMAGES, "waivers_by_number": waivers,
        "review_file_name": REVIEW_FILE_NAME,
        "filter_kinds": sorted({row["kind"] for row in rows}),
        "filter_classes": sorted({row["train_class"] for row in rows if row["train_class"]}),
    }


def evidence_images(result) -> tuple[set[int], set[int]]:
    """``(sample indices, train indices)`` of the evidence pictures the report shows."""
    r = result if isinstance(result, dict) else result.to_dict()
    samples = evidence_sample_indices(r, MAX_EVIDENCE_IMAGES)
    train = {row["train_index"] for row in evidence_table(r)[:MAX_EVIDENCE_IMAGES]}
    return samples, train
