"""The review file: a reviewer's recorded decisions to accept flagged findings (waivers).

``ganaudit-review.toml`` lives in the repository beside ``ganaudit.toml`` (the policy). Each
waiver accepts the flags of one training image, named by its content hash
(``ganaudit.review.content``), for every sample or for one sample only::

    [[waivers]]
    train_sha256 = "9f2c…"              # required: the training image's content hash
    train_path = "circle_red/0075.png"  # optional, for the reader; not used to match
    seed = [0, 17]                      # optional: only the sample of this latent seed
    # sample_path = "x/0001.png"        # optional, --samples audits: only this sample file
    reviewer = "Ana Lima"               # required: who decided
    date = 2025-01-31                   # required: when (a TOML date, or "2025-01-31")
    reason = "generic red circle, licensed from the artist"   # required: why
    expires = 2025-07-31                # optional: last day the waiver holds

Without ``seed`` or ``sample_path`` the waiver covers any sample that copies the image.
A waived flag stays in the result (listed as waived, with the waiver's number) but does not
count toward the leak gate. A waiver that has expired, or that matches no flagged sample of
the audit, is *stale*: it is reported, and an expired one waives nothing. Every mistake in
the file is an error naming the file and the waiver's number (its position, from 1).
"""
from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ganaudit.errors import GanauditError

REVIEW_FILE_NAME = "ganaudit-review.toml"
REQUIRED = ("train_sha256", "reviewer", "date", "reason")
OPTIONAL = ("train_path", "seed", "sample_path", "expires")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Figures the leak gate reads that waivers change; the result keeps the raw ones.
COUNTED_METRICS = ("n_flagged", "flagged_fraction", "n_significant")


@dataclass(frozen=True)
class Waiver:
    """One ``[[waivers]]`` table; ``number`` is its position in the file, from 1."""

    number: int
    train_sha256: str
    reviewer: str
    date: dt.date
    reason: str
    train_path: str | None = None
    seed: tuple[int, int] | None = None
    sample_path: str | None = None
    expires: dt.date | None = None

    @property
    def specific(self) -> bool:
        """True when it names one sample (a seed or a sample path)."""
        return self.seed is not None or self.sample_path is not None

    def matches(self, entry: dict) -> bool:
        """Whether it covers a flagged entry of ``memorization.flagged``."""
        if entry.get("train_sha256") != self.train_sha256:
            return False
        if self.seed is not None:
            return [int(v) for v in entry.get("seed") or []] == list(self.seed)
        if self.sample_path is not None:
            return entry.get("sample_path") == self.sample_path
        return True

    def expired(self, today: dt.date) -> bool:
        """True after its ``expires`` day (the waiver holds on that day itself)."""
        return self.expires is not None and today > self.expires


def find_review_file(explicit: Path | None, cwd: Path) -> Path | None:
    """``explicit`` (``--review-file`` / ``review_file``), else ``ganaudit-review.toml`` in ``cwd`` if present."""
    if explicit is not None:
        return Path(explicit)
    candidate = Path(cwd) / REVIEW_FILE_NAME
    return candidate if candidate.is_file() else None


def read_review_file(path: Path) -> tuple[Waiver, ...]:
    """Parse a review file; GanauditError (one line) on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise GanauditError(f"--review-file {path}: no such file")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise GanauditError(f"cannot read review file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise GanauditError(f"review file {path} is not valid TOML: {e}") from None
    return parse_review(data, str(path))


def parse_review(data: dict, source: str) -> tuple[Waiver, ...]:
    """The waivers of a parsed review file (``source`` names it in errors)."""
    unknown = sorted(set(data) - {"waivers"})
    if unknown:
        raise GanauditError(f"{source}: unknown key(s) {', '.join(unknown)}; a review file holds [[waivers]] tables")
    entries = data.get("waivers", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise GanauditError(f"{source}: 'waivers' must be an array of tables, written [[waivers]]")
    waivers = tuple(_parse_waiver(entry, n, source) for n, entry in enumerate(entries, start=1))
    seen: dict[tuple, int] = {}
    for w in waivers:
        key = (w.train_sha256, w.seed, w.sample_path)
        if key in seen:
            raise GanauditError(f"{source}: waiver {w.number} waives the same image and sample as waiver {seen[key]}")
        seen[key] = w.number
    return waivers


def _parse_waiver(entry: dict, number: int, source: str) -> Waiver:
    where = f"{source}: waiver {number}"
    unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise GanauditError(f"{where}: unknown key(s) {', '.join(unknown)}; a waiver has "
                            f"{', '.join(REQUIRED + OPTIONAL)}")
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise GanauditError(f"{where}: missing {', '.join(missing)}")
    digest = entry["train_sha256"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
        raise GanauditError(f"{where}: train_sha256 must be 64 hex digits (the SHA-256 of the training "
                            f"image; the report gives it), got {digest!r}")
    if "seed" in entry and "sample_path" in entry:
        raise GanauditError(f"{where}: give seed or sample_path, not both")
    reviewer = _text(entry["reviewer"], f"{where}: reviewer", "who decided")  # checked in the snippet's order
    date = _date(entry["date"], f"{where}: date", "the day of the decision")
    reason = _text(entry["reason"], f"{where}: reason", "why the finding is accepted")
    expires = _date(entry["expires"], f"{where}: expires", "the last day it holds") if "expires" in entry else None
    if expires is not None and expires < date:
        raise GanauditError(f"{where}: expires {expires.isoformat()} is before its date {date.isoformat()}")
    return Waiver(
        number=number, train_sha256=digest.lower(), reviewer=reviewer, date=date, reason=reason, expires=expires,
        train_path=_text(entry["train_path"], f"{where}: train_path", "the image's path", False) if "train_path" in entry else None,
        seed=_seed(entry["seed"], where) if "seed" in entry else None,
        sample_path=_text(entry["sample_path"], f"{where}: sample_path", "the sample file", False) if "sample_path" in entry else None,
    )


def _text(value, what: str, meaning: str, strip: bool = True) -> str:
    if not isinstance(value, str):
        raise GanauditError(f"{what} must be a string ({meaning}), got {value!r}")
    if not value.strip():
        raise GanauditError(f"{what} is empty: write {meaning}")
    return value.strip() if strip else value


def _date(value, what: str, meaning: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    shown = "empty" if value == "" else f"got {value!r}"
    raise GanauditError(f"{what} must be {meaning}, a date like 2025-01-31; {shown}")


def _seed(value, where: str) -> tuple[int, int]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))
    if not ok:
        raise GanauditError(f"{where}: seed must be [run seed, sample index], two non-negative integers "
                            f"as the report shows them (like [0, 17]), got {value!r}")
    return int(value[0]), int(value[1])


def apply_waivers(memorization: dict, waivers: tuple[Waiver, ...], today: dt.date, source: str,
                  source_sha256: str | None = None) -> dict:
    """Mark waived flags and return the result's ``review`` section.

    Each flagged entry gets ``waived_by``: the number of the waiver that covers it (one that
    names its sample before one for any sample, then the first in the file), or None. Expired
    waivers cover nothing.

    Args:
        memorization: the result's ``memorization`` section; its ``flagged`` entries are changed.
        waivers: from ``read_review_file``.
        today: the day expiry is judged on.
        source: the review file's path, as the result records it.
        source_sha256: the review file's SHA-256, so a result names the decisions it used.

    Returns:
        ``{"file", "sha256", "evaluated_on", "n_waivers", "n_waived", "n_stale",
        "counted": {n_flagged, flagged_fraction, n_significant}, "waivers": [...]}``.
    """
    matched = {w.number: 0 for w in waivers}
    used = {w.number: 0 for w in waivers}
    paths: dict[int, set[str]] = {w.number: set() for w in waivers}
    for entry in memorization["flagged"]:
        covering = [w for w in waivers if w.matches(entry)]
        for w in covering:
            matched[w.number] += 1
            paths[w.number].add(entry.get("train_path", ""))
        live = sorted((w for w in covering if not w.expired(today)), key=lambda w: (not w.specific, w.number))
        entry["waived_by"] = live[0].number if live else None
        if live:
            used[live[0].number] += 1
    rows = [_waiver_row(w, matched[w.number], used[w.number], sorted(paths[w.number]), today) for w in waivers]
    waived = [e for e in memorization["flagged"] if e["waived_by"] is not None]
    n_samples = memorization["n_samples"]
    counted_flagged = memorization["n_flagged"] - len(waived)
    return {
        "file": source, "sha256": source_sha256, "evaluated_on": today.isoformat(),
        "n_waivers": len(waivers), "n_waived": len(waived),
        "n_stale": sum(r["status"] != "active" for r in rows),
        "counted": {
            "n_flagged": counted_flagged,
            "flagged_fraction": counted_flagged / n_samples,
            "n_significant": memorization["n_significant"] - sum(bool(e.get("significant")) for e in waived),
        },
        "waivers": rows,
    }


def _waiver_row(w: Waiver, n_matched: int, n_waived: int, paths: list[str], today: dt.date) -> dict:
    if w.expired(today):
        status, why = "expired", f"expired on {w.expires.isoformat()}; it waives nothing"
    elif n_matched == 0:
        status, why = "unmatched", "matches no flagged sample of this audit"
    else:
        status, why = "active", ""
    return {
        "number": w.number, "train_sha256": w.train_sha256, "train_path": w.train_path,
        "seed": list(w.seed) if w.seed is not None else None, "sample_path": w.sample_path,
        "reviewer": w.reviewer, "date": w.date.isoformat(), "reason": w.reason,
        "expires": w.expires.isoformat() if w.expires else None,
        "n_matched": n_matched, "n_waived": n_waived, "matched_paths": paths,
        "status": status, "stale_reason": why,
    }


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def waiver_snippet(entry: dict, any_sample: bool = False) -> str:
    """The ``[[waivers]]`` table to paste into the review file for a flagged entry.

    The decision itself (reviewer, date, reason) is left empty on purpose: ganaudit refuses
    the file until a person fills it in. With ``any_sample`` (or a result without sample
    identities) the waiver covers every sample that copies the training image.

    Returns:
        TOML text, or a one-line ``#`` comment when the entry has no content hash (results
        written before hashes were recorded: audit again).
    """
    digest = entry.get("train_sha256")
    if not digest:
        return "# no content hash in this result: run the audit again with this ganaudit to get one"
    lines = ["[[waivers]]", f'train_sha256 = "{digest}"']
    if entry.get("train_path"):
        lines.append(f"train_path = {toml_string(entry['train_path'])}")
    if not any_sample and entry.get("seed") is not None:
        seed = ", ".join(str(int(v)) for v in entry["seed"])
        lines.append(f"seed = [{seed}]  # this sample only; without this line: every sample copying the image")
    elif not any_sample and entry.get("sample_path"):
        lines.append(f"sample_path = {toml_string(entry['sample_path'])}  # this sample only")
    lines += ['reviewer = ""', 'date = ""  # the day of the decision, like 2025-01-31', 'reason = ""',
              "# expires = 2030-12-31  (optional: the last day the waiver holds)"]
    return "\n".join(lines) + "\n"
