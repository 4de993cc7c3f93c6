"""Candidate against release: ``ganaudit compare BASELINE.json CANDIDATE.json --html diff.html``.

The comparison reads two saved results and nothing else. For every headline figure (each
metric a gate may name, ``ganaudit.gate.METRICS``) it gives both values, the change and
whether that is better or worse (the metric's direction: ``METRICS[m]`` is True where higher
is better); the leak figures after waivers too, when either result had a review file. Modes
gained and lost are matched by name. Training images leaked by the candidate are *new* or
*known* (leaked by the baseline too), and the baseline's leaks the candidate no longer has
are *gone*; images are matched by content hash when both results have them, else by path.

``compare`` never gates (its exit code is 0 whenever both results can be read): the gate
against a release is ``ganaudit check --baseline``, whose report shows this same comparison.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ganaudit.errors import GanauditError
from ganaudit.gate import METRICS
from ganaudit.result import dig

_TOLERANCE = 1e-12  # changes smaller than this are "same" (float noise in re-serialised figures)


def compare_results(baseline: dict, candidate: dict) -> dict:
    """The comparison of two ``AuditResult.to_dict()`` results (module docstring).

    Raises:
        GanauditError: the two were embedded with different embedders (incomparable figures).
    """
    b_emb, c_emb = baseline["embedder"].get("name"), candidate["embedder"].get("name")
    if b_emb != c_emb:
        raise GanauditError(f"the baseline was audited with embedder {b_emb!r}, the candidate with {c_emb!r}: "
                            "figures from different feature spaces cannot be compared")
    return {
        "baseline": _side(baseline), "candidate": _side(candidate),
        "notes": _notes(baseline, candidate),
        "figures": _figures(baseline, candidate),
        "gates": _gates(baseline, candidate),
        "modes": _modes(baseline, candidate),
        "leaks": _leaks(baseline, candidate),
    }


def _side(result: dict) -> dict:
    gen, review = result["generator"], result.get("review")
    return {"verdict": result["verdict"], "path": gen.get("path"), "sha256": gen.get("sha256") or gen.get("fingerprint"),
            "n_samples": result["memorization"]["n_samples"],
            "review_file": review["file"] if review else None, "n_waived": review["n_waived"] if review else 0}


def _notes(baseline: dict, candidate: dict) -> list[str]:
    """What makes the two runs less comparable than they look."""
    notes = []
    if baseline["train"].get("fingerprint") != candidate["train"].get("fingerprint"):
        notes.append("the training sets differ (fingerprints differ): leaks and modes are matched as well as possible")
    if baseline["memorization"]["n_samples"] != candidate["memorization"]["n_samples"]:
        notes.append(f"sample counts differ ({baseline['memorization']['n_samples']} against "
                     f"{candidate['memorization']['n_samples']}): compare fractions, not counts")
    b_copy = (baseline["memorization"].get("copy_embedder") or {}).get("name")
    c_copy = (candidate["memorization"].get("copy_embedder") or {}).get("name")
    if b_copy != c_copy:
        notes.append(f"copy search used {b_copy!r} for the baseline and {c_copy!r} for the candidate")
    b_gen, c_gen = _side(baseline)["sha256"], _side(candidate)["sha256"]
    if b_gen and b_gen == c_gen:
        notes.append("both results audited the same generator file (same SHA-256)")
    return notes


def _direction(base, cand, higher_is_better: bool) -> tuple[float | None, str]:
    if base is None or cand is None:
        return None, "n/a"
    change = float(cand) - float(base)
    if abs(change) <= _TOLERANCE:
        return 0.0, "same"
    return change, "better" if (change > 0) == higher_is_better else "worse"


def _figures(baseline: dict, candidate: dict) -> list[dict]:
    rows = []
    for metric, higher_is_better in METRICS.items():
        base, cand = dig(baseline, metric), dig(candidate, metric)
        if base is None and cand is None:
            continue
        change, direction = _direction(base, cand, higher_is_better)
        rows.append({"metric": metric, "baseline": base, "candidate": cand, "change": change,
                     "higher_is_better": higher_is_better, "direction": direction})
    if baseline.get("review") or candidate.get("review"):
        for name in ("flagged_fraction", "n_flagged"):
            metric = f"memorization.{name}"
            base, cand = _counted(baseline, name), _counted(candidate, name)
            change, direction = _direction(base, cand, METRICS[metric])
            rows.append({"metric": f"{metric} after waivers", "baseline": base, "candidate": cand, "change": change,
                         "higher_is_better": METRICS[metric], "direction": direction})
    return rows


def _counted(result: dict, name: str):
    review = result.get("review")
    return review["counted"][name] if review else result["memorization"][name]


def _gates(baseline: dict, candidate: dict) -> list[dict]:
    base = {g["name"]: g for g in baseline["gates"]}
    cand = {g["name"]: g for g in candidate["gates"]}
    names = list(dict.fromkeys([*base, *cand]))
    return [{"name": n, "baseline": base[n]["status"] if n in base else None,
             "candidate": cand[n]["status"] if n in cand else None} for n in names]


def _modes(baseline: dict, candidate: dict) -> dict:
    b, c = baseline["coverage"]["modes"], candidate["coverage"]["modes"]
    if b.get("source") != c.get("source"):
        return {"comparable": False, "reason": f"modes come from {b.get('source')} in the baseline and "
                                               f"{c.get('source')} in the candidate", "gained": [], "lost": [], "missing": []}
    if b.get("source") == "kmeans" and baseline["train"].get("fingerprint") != candidate["train"].get("fingerprint"):
        return {"comparable": False, "reason": "k-means modes of different training sets do not correspond",
                "gained": [], "lost": [], "missing": []}
    b_cov = {m["name"]: m["covered"] for m in b["per_mode"]}
    c_cov = {m["name"]: m["covered"] for m in c["per_mode"]}
    return {"comparable": True, "reason": "",
            "gained": [n for n, ok in c_cov.items() if ok and not b_cov.get(n, False)],
            "lost": [n for n, ok in b_cov.items() if ok and not c_cov.get(n, False)],
            "missing": [n for n, ok in c_cov.items() if not ok]}


def _leaked_by_key(result: dict, by: str) -> dict[str, dict]:
    waived: dict[int, int] = {}
    for entry in result["memorization"].get("flagged", []):
        if entry.get("waived_by") is not None:
            waived[entry["train_index"]] = waived.get(entry["train_index"], 0) + 1
    out: dict[str, dict] = {}
    for e in result["memorization"].get("leaked_train_examples", []):
        key = e.get("train_sha256") if by == "content" else e["train_path"]
        row = out.setdefault(key, {"train_sha256": e.get("train_sha256"), "train_path": e["train_path"],
                                   "count": 0, "n_waived": 0})
        row["count"] += e["count"]
        row["n_waived"] += waived.get(e["train_index"], 0)
    return out


def _leaks(baseline: dict, candidate: dict) -> dict:
    def hashed(result):
        return all(e.get("train_sha256") for e in result["memorization"].get("leaked_train_examples", []))

    by = "content" if hashed(baseline) and hashed(candidate) else "path"
    b, c = _leaked_by_key(baseline, by), _leaked_by_key(candidate, by)

    def row(key):
        source = c.get(key) or b[key]
        return {"train_sha256": source["train_sha256"], "train_path": source["train_path"],
                "baseline_count": b[key]["count"] if key in b else 0, "candidate_count": c[key]["count"] if key in c else 0,
                "candidate_waived": c[key]["n_waived"] if key in c else 0}

    by_count = lambda r: (-r["candidate_count"], -r["baseline_count"], r["train_path"])  # noqa: E731
    return {"matched_by": by,
            "new": sorted((row(k) for k in c if k not in b), key=by_count),
            "known": sorted((row(k) for k in c if k in b), key=by_count),
            "gone": sorted((row(k) for k in b if k not in c), key=by_count)}


def _fmt(value, sign: str = "") -> str:
    """A figure for the terminal: integers as such, 4 decimals in [0.001, 10000), else 4 digits."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:{sign}d}"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:{sign}.4f}"
    return f"{value:{sign}.1f}" if abs(value) >= 1e4 else f"{value:{sign}.4g}"


def _review_words(side: dict) -> str:
    return f"; {side['n_waived']} flags waived by {side['review_file']}" if side["review_file"] else ""


def _same_type(row: dict):
    """The change as an int when both figures are ints (counts)."""
    if isinstance(row["baseline"], int) and isinstance(row["candidate"], int):
        return row["candidate"] - row["baseline"]
    return row["change"]


def render_compare_summary(comparison: dict, html: Path | None = None) -> str:
    """The terminal summary of a comparison."""
    b, c = comparison["baseline"], comparison["candidate"]
    lines = [f"ganaudit compare: baseline {b['verdict'].upper()} -> candidate {c['verdict'].upper()}",
             f"  baseline   {b['path']}  ({b['n_samples']} samples{_review_words(b)})",
             f"  candidate  {c['path']}  ({c['n_samples']} samples{_review_words(c)})",
             f"  {'figure':<48} {'baseline':>10} {'candidate':>10} {'change':>10}"]
    for row in comparison["figures"]:
        change = "" if row["change"] is None else _fmt(_same_type(row), "+")
        lines.append(f"  {row['metric']:<48} {_fmt(row['baseline']):>10} {_fmt(row['candidate']):>10} "
                     f"{change:>10}  {row['direction']}")
    for gate in comparison["gates"]:
        if gate["baseline"] and gate["candidate"] and gate["baseline"] != gate["candidate"]:
            lines.append(f"  gate {gate['name']}: {gate['baseline'] or 'absent'} -> {gate['candidate'] or 'absent'}")
    modes = comparison["modes"]
    if modes["comparable"]:
        lines.append(f"  modes      gained: {', '.join(modes['gained']) or 'none'}; lost: {', '.join(modes['lost']) or 'none'}")
    else:
        lines.append(f"  modes      not compared: {modes['reason']}")
    leaks = comparison["leaks"]
    lines.append(f"  leaks      {len(leaks['new'])} training image(s) newly leaked, {len(leaks['known'])} already known, "
                 f"{len(leaks['gone'])} no longer leaked (matched by {leaks['matched_by']})")
    for row in leaks["new"][:5]:
        lines.append(f"    new: {row['train_path']} ({row['candidate_count']} sample(s)"
                     f"{', ' + str(row['candidate_waived']) + ' waived' if row['candidate_waived'] else ''})")
    if len(leaks["new"]) > 5:
        lines.append(f"    … and {len(leaks['new']) - 5} more")
    lines += [f"  note: {note}" for note in comparison["notes"]]
    if html is not None:
        lines.append(f"  diff: {html}")
    return "\n".join(lines)


def render_compare_html(comparison: dict, template_dir: Path | None = None) -> str:
    """The self-contained diff page (``diff.html.j2``)."""
    from ganaudit.report.html import make_environment

    return make_environment(template_dir).get_template("diff.html.j2").render(c=comparison)


def add_compare_command(subparsers) -> None:
    """Register ``ganaudit compare`` on the CLI's subparsers."""
    p = subparsers.add_parser("compare", help="compare a candidate's result with the released model's")
    p.add_argument("baseline", type=Path, help="result.json of the released model")
    p.add_argument("candidate", type=Path, help="result.json of the candidate")
    p.add_argument("--html", type=Path, help="write the side-by-side diff page here")
    p.add_argument("--json", type=Path, help="write the comparison as JSON here")
    p.add_argument("--template-dir", type=Path, help="a folder of templates overriding the shipped ones")
    p.set_defaults(handler=cmd_compare)


def _read(path: Path, what: str) -> dict:
    from ganaudit.result import AuditResult

    try:
        return AuditResult.read_json(path).to_dict()
    except FileNotFoundError:
        raise GanauditError(f"{what} {path}: no such file") from None
    except (OSError, ValueError, TypeError) as e:
        raise GanauditError(f"{what} {path}: not a ganaudit JSON result: {e}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison; write the diff page and JSON when asked. Exit code 0."""
    import json

    from ganaudit.plumbing import write_atomic

    comparison = compare_results(_read(args.baseline, "baseline"), _read(args.candidate, "candidate"))
    outputs = []
    if args.html is not None:
        outputs.append((args.html, render_compare_html(comparison, args.template_dir)))
    if args.json is not None:
        outputs.append((args.json, json.dumps(comparison, indent=2, allow_nan=False)))
    for path, text in outputs:
        write_atomic(Path(path), text)
    print(render_compare_summary(comparison, args.html))
    return 0
