"""The tags ganaudit writes on a model version (and on its audit run), as constants.

A version that was gated carries ``ganaudit.verdict`` (``pass``, ``fail`` or ``error``); a
verdict of ``pass``/``fail`` comes with the headline figures, the audit run's id, the tool
version, the training set's fingerprint and the gate key; ``error`` comes with
``ganaudit.reason``. Deployment reads the alias, people read the tags, tools read the run.
"""
from __future__ import annotations

import math

PASS, FAIL, ERROR = "pass", "fail", "error"

TAG_VERDICT = "ganaudit.verdict"
TAG_REASON = "ganaudit.reason"
TAG_RUN_ID = "ganaudit.run_id"
TAG_KEY = "ganaudit.key"
TAG_TOOL = "ganaudit.tool_version"
TAG_TRAIN = "ganaudit.train_digest"
TAG_BASELINE = "ganaudit.baseline"
TAG_FAILED = "ganaudit.failed_gates"
TAG_MODES = "ganaudit.modes_covered"
# headline figure tag -> where the result keeps it
HEADLINE = {
    "ganaudit.flagged_fraction": "memorization.flagged_fraction",
    "ganaudit.coverage": "coverage.coverage",
    "ganaudit.precision": "coverage.precision",
    "ganaudit.recall": "coverage.recall",
    "ganaudit.duplicate_fraction": "coverage.duplicate_fraction",
}
REASON_MAX = 2000  # characters of an error's reason kept in the tag


def result_tags(result, run_id: str, key: str, baseline_note: str) -> dict[str, str]:
    """The version's tags for an audit result, in the order they are written (verdict last)."""
    from ganaudit import __version__

    modes = result.get("coverage.modes") or {}
    tags = {name: _figure(result.get(path)) for name, path in HEADLINE.items()}
    tags[TAG_MODES] = f"{modes.get('covered')}/{modes.get('total')}" if modes else "n/a"
    tags[TAG_FAILED] = ",".join(g["name"] for g in result.gates if not g.get("passed")) or "none"
    tags |= {TAG_RUN_ID: run_id, TAG_TOOL: __version__, TAG_TRAIN: str(result.train.get("fingerprint")),
             TAG_BASELINE: baseline_note, TAG_KEY: key, TAG_VERDICT: result.verdict}
    return tags


def error_tags(reason: str) -> dict[str, str]:
    """The version's tags when it could not be audited."""
    from ganaudit import __version__

    text = " ".join(reason.split())
    return {TAG_REASON: text[:REASON_MAX], TAG_TOOL: __version__, TAG_VERDICT: ERROR}


def _figure(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return "n/a"
