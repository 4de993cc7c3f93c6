"""The audit as a model-card section: Markdown with Hugging Face ``model-index`` metadata.

``--model-card PATH`` writes a file that starts with a YAML metadata block (between ``---``
lines, as a Hub ``README.md`` does) holding a ``model-index`` entry in the Hub's format
(``huggingface/hub-docs`` ``modelcard.md``): one result whose task is
``unconditional-image-generation``, whose dataset is the training set, and whose metrics are
the audit's figures, each ``verified: false`` (self-reported, not computed by the Hub). The
Markdown section below it gives the verdict, the gates, the figures and the waivers.
Metric ``type`` ids are ganaudit's own (``ganaudit/<metric path>``), except ``fid``/``kid``
for Fréchet and kernel distances of Inception features, which are what those ids mean.
Merge both parts into the model's own card.

The YAML is written by hand (strings double-quoted, everything but printable ASCII
escaped), so writing a card needs no YAML package.
"""
from __future__ import annotations

import json
from pathlib import Path

from ganaudit.result import dig

# (metric path, pretty name); the figures a card reports, when the audit computed them.
CARD_METRICS = (
    ("memorization.flagged_fraction", "Samples flagged as copies of training images"),
    ("memorization.n_flagged", "Samples flagged as copies (count)"),
    ("memorization.authenticity", "Authenticity (Alaa et al. 2022)"),
    ("memorization.ct_statistic", "C_T data-copying statistic (Meehan et al. 2020)"),
    ("memorization.mia_auc", "Membership-inference AUC (0.5: no leak)"),
    ("coverage.modes.covered_fraction", "Modes covered"),
    ("coverage.precision", "Precision"),
    ("coverage.recall", "Recall"),
    ("coverage.density", "Density"),
    ("coverage.coverage", "Coverage"),
    ("coverage.fd", "Fréchet distance"),
    ("coverage.kd", "Kernel distance"),
    ("coverage.duplicate_fraction", "Near-duplicate samples"),
    ("coverage.vendi", "Vendi score"),
    ("coverage.inception_score", "Inception Score"),
)


def _metric_type(path: str, embedder: str) -> str:
    if embedder == "inception" and path in ("coverage.fd", "coverage.kd"):
        return "fid" if path == "coverage.fd" else "kid"
    if path == "coverage.inception_score":
        return "inception_score"
    return f"ganaudit/{path}"


def card_metrics(result: dict) -> list[dict]:
    """The ``metrics`` list of the model-index entry: type, value, name, verified."""
    embedder = result["embedder"].get("name", "?")
    rows = []
    for path, name in CARD_METRICS:
        value = dig(result, path)
        if value is None:
            continue
        suffix = f" ({embedder} features)" if path.startswith("coverage.") and path != "coverage.modes.covered_fraction" else ""
        rows.append({"type": _metric_type(path, embedder), "value": value, "name": name + suffix, "verified": False})
    review = result.get("review")
    if review:
        rows.append({"type": "ganaudit/memorization.flagged_fraction_after_waivers",
                     "value": review["counted"]["flagged_fraction"],
                     "name": f"Samples flagged as copies, not waived ({review['n_waived']} waived)", "verified": False})
    return rows


def model_index(result: dict) -> list[dict]:
    """The ``model-index`` metadata (a list with one model)."""
    gen, train = result["generator"], result["train"]
    name = Path(gen.get("path") or "generator").stem
    conditional = bool((result.get("config") or {}).get("num_classes"))
    return [{
        "name": name,
        "results": [{
            "task": {"type": "unconditional-image-generation",
                     "name": "Class-conditional image generation" if conditional else "Image generation"},
            "dataset": {"type": Path(train["path"]).name or "train", "name": f"training set {train['path']}"},
            "metrics": card_metrics(result),
        }],
    }]


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML of dicts, lists, strings, numbers, booleans and None."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            text = to_yaml(item, indent + 2) if isinstance(item, (dict, list)) and item else f"{pad}  {_scalar(item)}"
            lines.append(f"{pad}- {text.lstrip()}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return yaml_string(str(value))


def yaml_string(text: str) -> str:
    """A YAML double-quoted scalar: printable ASCII as is, everything else escaped (``\\uXXXX``, ``\\UXXXXXXXX``)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _figure_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_model_card(result) -> str:
    """The model-card text of an AuditResult (or its dict): YAML metadata, then Markdown."""
    r = result if isinstance(result, dict) else result.to_dict()
    mem, gen = r["memorization"], r["generator"]
    lines = ["---", to_yaml({"model-index": model_index(r)}), "---", "",
             "## Pre-release audit (ganaudit)", "",
             f"**Verdict: {r['verdict'].upper()}.** `{gen.get('path')}` (SHA-256 `{gen.get('sha256') or gen.get('fingerprint')}`), "
             f"{mem['n_samples']} samples against {r['train']['n_images']} training images "
             f"(`{r['train']['path']}`, fingerprint `{r['train']['fingerprint'][:16]}…`), "
             f"embedder `{r['embedder']['name']}`, ganaudit {r.get('versions', {}).get('ganaudit', '?')}.", "",
             "| gate | condition | value | status |", "|---|---|---|---|"]
    for g in r["gates"]:
        value = "n/a" if g.get("value") is None else _figure_text(g["value"])
        threshold = "n/a" if g.get("threshold") is None else _figure_text(g["threshold"])
        lines.append(f"| {_cell(g['name'])} | `{g['metric']}` {g['op']} {threshold} | {value} | {g['status']} |")
    lines += ["", "| figure | value |", "|---|---|"]
    for row in card_metrics(r):
        lines.append(f"| {row['name']} | {_figure_text(row['value'])} |")
    lines += ["", f"{len(mem['leaked_train_examples'])} training image(s) are copied by at least one flagged sample.", ""]
    lines += _review_lines(r.get("review"))
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _review_lines(review: dict | None) -> list[str]:
    if not review:
        return ["No review file was used: every flag counts toward the leak gate."]
    lines = [f"Review file `{review['file']}` (SHA-256 `{review['sha256']}`): {review['n_waived']} flag(s) waived by "
             f"{review['n_waivers']} waiver(s), evaluated on {review['evaluated_on']}; {review['n_stale']} stale.", "",
             "| waiver | training image | reviewer | date | reason | expires | status |", "|---|---|---|---|---|---|---|"]
    for w in review["waivers"]:
        image = w["train_path"] or w["train_sha256"][:16]
        cells = [str(w["number"]), f"`{image}`", w["reviewer"], w["date"], w["reason"], w["expires"] or "never", w["status"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines
