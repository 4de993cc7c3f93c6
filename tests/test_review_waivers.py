"""Waivers: the review file's format and errors, content hashes, and how waivers
change the verdict: waived flags do not count toward the leak gate; expired and unmatched
waivers are stale."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from ganaudit.review.hooks import gate_with_review
from ganaudit.config import AuditConfig, resolve_config
from ganaudit.errors import GanauditError
from ganaudit.result import AuditResult
from ganaudit.review.content import row_sha256, train_image_hashes
from ganaudit.review.waivers import apply_waivers, parse_review, read_review_file, toml_string, waiver_snippet
from ganaudit.sources.datasets import open_image_set

FAST = ("--num-samples", "120", "--tta", "none")
HASH_A, HASH_B = "a" * 64, "b" * 64
TODAY = dt.date(2025, 6, 1)


def waiver(digest: str, **extra) -> str:
    lines = ["[[waivers]]", f'train_sha256 = "{digest}"', 'reviewer = "Ana"', "date = 2025-05-01", 'reason = "generic"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def fill(snippet: str, reviewer: str = "Ana Lima", day: str = "2025-05-01", reason: str = "accepted") -> str:
    """A report snippet with the decision filled in, as a reviewer does."""
    return (snippet.replace('reviewer = ""', f'reviewer = "{reviewer}"')
            .replace('date = ""', f"date = {day}").replace('reason = ""', f'reason = "{reason}"'))


# --- the file format -------------------------------------------------------------------------

BAD_FILES = [
    ("waivers = 3", "'waivers' must be an array of tables"),
    ("[[waiver]]\ntrain_sha256 = 'x'", "unknown key(s) waiver"),
    (waiver(HASH_A, colour='"red"'), "waiver 1: unknown key(s) colour"),
    ('[[waivers]]\ntrain_sha256 = "' + HASH_A + '"\nreviewer = "Ana"\ndate = 2025-05-01', "waiver 1: missing reason"),
    (waiver("abc123"), "train_sha256 must be 64 hex digits"),
    (waiver(HASH_A).replace('reviewer = "Ana"', 'reviewer = ""'), "waiver 1: reviewer is empty"),
    (waiver(HASH_A).replace('reason = "generic"', "reason = 3"), "waiver 1: reason must be a string"),
    (waiver(HASH_A).replace("date = 2025-05-01", 'date = ""'), "waiver 1: date must be the day of the decision"),
    (waiver(HASH_A).replace("date = 2025-05-01", 'date = "last tuesday"'), "a date like 2025-01-31"),
    (waiver(HASH_A, expires="2025-04-01"), "expires 2025-04-01 is before its date 2025-05-01"),
    (waiver(HASH_A, seed="[0]"), "seed must be [run seed, sample index]"),
    (waiver(HASH_A, seed="[0, -1]"), "seed must be [run seed, sample index]"),
    (waiver(HASH_A, seed="[0, 1]", sample_path='"a.png"'), "give seed or sample_path, not both"),
    (waiver(HASH_A) + waiver(HASH_A.upper()), "waiver 2 waives the same image and sample as waiver 1"),
]


@pytest.mark.parametrize("text, message", BAD_FILES)
def test_every_bad_entry_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "ganaudit-review.toml"
    path.write_text(text)
    with pytest.raises(GanauditError) as info:
        read_review_file(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_review_files(tmp_path):
    with pytest.raises(GanauditError, match="no such file"):
        read_review_file(tmp_path / "missing.toml")
    bad = tmp_path / "r.toml"
    bad.write_text("[[waivers]\n")
    with pytest.raises(GanauditError, match="is not valid TOML"):
        read_review_file(bad)


def test_a_good_file_parses_with_defaults(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(waiver(HASH_A.upper(), seed="[0, 17]", expires="2025-12-31")
                    + waiver(HASH_B).replace("date = 2025-05-01", 'date = "2025-05-02"'))
    a, b = read_review_file(path)
    assert (a.number, a.train_sha256, a.seed, a.expires) == (1, HASH_A, (0, 17), dt.date(2025, 12, 31))
    assert (b.number, b.seed, b.sample_path, b.expires, b.date) == (2, None, None, None, dt.date(2025, 5, 2))
    assert parse_review({}, "empty") == ()


def test_a_bad_review_file_fails_before_the_audit_runs(tmp_path, tiny_sets, capsys):
    review = tmp_path / "r.toml"
    review.write_text(waiver("nothex"))
    with pytest.raises(GanauditError, match="train_sha256 must be 64 hex digits"):
        resolve_config({}, {"train": tiny_sets["train"], "generator": tiny_sets["copy_gen"], "review_file": review})
    code, _, err = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"], *FAST,
                           "--review-file", review, "--json", tmp_path / "r.json", capsys=capsys)
    assert code == 2 and err.count("error:") == 1 and "waiver 1" in err
    assert not (tmp_path / "r.json").exists()
    code, _, err = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"], *FAST,
                           "--review-file", tmp_path / "nope.toml", capsys=capsys)
    assert code == 2 and "--review-file" in err and "no such file" in err


# --- content hashes --------------------------------------------------------------------------

def test_folder_images_hash_as_their_file_bytes(tiny_sets):
    images = open_image_set(tiny_sets["train"])
    got = train_image_hashes(images, [0, 5, 5, 77])
    assert set(got) == {0, 5, 77}
    for i, digest in got.items():
        assert digest == hashlib.sha256((tiny_sets["train"] / images.paths[i]).read_bytes()).hexdigest()


def test_array_rows_hash_as_their_little_endian_values(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 65535, size=(6, 8, 8, 3)).astype(np.uint16)
    rows[4] = rows[1]  # a duplicate row hashes the same
    np.savez(tmp_path / "s.npz", images=rows)
    np.save(tmp_path / "big.npy", rows.astype(">u2"))  # the same values, stored big-endian
    small = train_image_hashes(open_image_set(tmp_path / "s.npz"), range(6))
    big = train_image_hashes(open_image_set(tmp_path / "big.npy"), range(6))
    reference = {i: hashlib.sha256(rows[i].astype("<u2").tobytes()).hexdigest() for i in range(6)}
    assert small == reference == big
    assert small[1] == small[4] and len(set(small.values())) == 5
    assert row_sha256(rows[2].astype(">u2")) == reference[2]


# --- applying waivers ------------------------------------------------------------------------

def _memorization(entries: list[tuple[str, int, bool]], n_samples: int = 100) -> dict:
    flagged = [{"sample_index": i, "seed": [0, i], "train_index": j, "train_path": f"img{j}.png",
                "train_sha256": digest, "significant": sig, "score": 0.1, "p_value": 0.01, "augmentation": "identity"}
               for i, (digest, j, sig) in enumerate(entries)]
    return {"n_samples": n_samples, "n_flagged": len(flagged), "n_significant": sum(e[2] for e in entries),
            "flagged": flagged}


def test_waivers_cover_what_they_name_and_stale_ones_are_reported():
    mem = _memorization([(HASH_A, 1, True), (HASH_A, 1, False), (HASH_B, 2, True), ("c" * 64, 3, True)])
    waivers = parse_review(tomllib.loads(
        waiver(HASH_A)                                           # 1: any sample of A
        + waiver(HASH_A, seed="[0, 1]")                          # 2: sample 1 only: more specific, wins there
        + waiver(HASH_B, expires="2025-05-31")                   # 3: expired yesterday: waives nothing
        + waiver("d" * 64)                                       # 4: matches nothing
        + waiver("c" * 64, expires="2025-06-01")), "r.toml")     # 5: last day today: still holds
    review = apply_waivers(mem, waivers, TODAY, "r.toml")
    assert [e["waived_by"] for e in mem["flagged"]] == [1, 2, None, 5]
    assert review["n_waived"] == 3
    assert review["counted"] == {"n_flagged": 1, "flagged_fraction": 0.01, "n_significant": 1}
    status = {w["number"]: (w["status"], w["n_matched"], w["n_waived"]) for w in review["waivers"]}
    assert status == {1: ("active", 2, 1), 2: ("active", 1, 1), 3: ("expired", 1, 0), 4: ("unmatched", 0, 0),
                      5: ("active", 1, 1)}
    assert review["n_stale"] == 2
    assert "expired on 2025-05-31" in review["waivers"][2]["stale_reason"]


def test_sample_path_waivers_match_samples_audits():
    mem = _memorization([(HASH_A, 1, True), (HASH_A, 1, True)])
    mem["flagged"][0].pop("seed")
    mem["flagged"][0]["sample_path"] = "gen/0001.png"
    mem["flagged"][1].pop("seed")
    mem["flagged"][1]["sample_path"] = "gen/0002.png"
    waivers = parse_review(tomllib.loads(waiver(HASH_A, sample_path='"gen/0002.png"')), "r.toml")
    apply_waivers(mem, waivers, TODAY, "r.toml")
    assert [e["waived_by"] for e in mem["flagged"]] == [None, 1]


EVIL = '<b onmouseover=alert(1)>x&y "q" \\ \t\x7f ünï 🙂.png'


@pytest.mark.parametrize("any_sample", [False, True])
def test_snippets_parse_back_to_waivers_of_their_entry(any_sample):
    entry = {"train_sha256": HASH_A, "train_path": EVIL, "seed": [3, 41], "sample_index": 41}
    text = fill(waiver_snippet(entry, any_sample=any_sample))
    assert tomllib.loads(toml_string(EVIL).join(["x = ", ""]))["x"] == EVIL
    (w,) = parse_review(tomllib.loads(text), "snippet")
    assert (w.train_sha256, w.train_path, w.reviewer, w.reason) == (HASH_A, EVIL, "Ana Lima", "accepted")
    assert w.seed == (None if any_sample else (3, 41))
    other = dict(entry, seed=[3, 42])
    assert w.matches(entry) and w.matches(other) == any_sample


def test_an_unfilled_snippet_is_refused():
    text = waiver_snippet({"train_sha256": HASH_A, "train_path": "a.png", "seed": [0, 1]})
    with pytest.raises(GanauditError, match="reviewer is empty"):
        parse_review(tomllib.loads(text), "r.toml")
    assert waiver_snippet({"train_path": "a.png"}).startswith("# no content hash")


# --- the verdict -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def copying_result(tiny_sets, tmp_path_factory) -> Path:
    """A failed audit: the copying generator, 120 samples."""
    out = tmp_path_factory.mktemp("copying") / "r.json"
    code, _, _ = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                         "--holdout", tiny_sets["holdout"], *FAST, "--json", out)
    assert code == 1
    return out


# The copying generator also fails the collapse gate; these tests judge the leak gate alone.
LEAK_GATE = {"name": "leaks", "metric": "memorization.flagged_fraction", "op": "<=", "threshold": 0.05}
POLICY = '[[gates]]\nname = "leaks"\nmetric = "memorization.flagged_fraction"\nop = "<="\nthreshold = 0.05\n'


def _regate(result_path: Path, review: Path) -> AuditResult:
    """Gate a saved result again with a review file, as the audit does at its end."""
    result = AuditResult.read_json(result_path)
    gate_with_review(result, AuditConfig(review_file=review, gates=(LEAK_GATE,)), None)
    return result


def _leaks_gate(result) -> dict:
    return next(g for g in result.gates if g["name"] == "leaks")


def _hits_per_image(result_path: Path) -> dict[str, int]:
    hits: dict[str, int] = {}
    for entry in json.loads(result_path.read_text())["memorization"]["flagged"]:
        hits[entry["train_sha256"]] = hits.get(entry["train_sha256"], 0) + 1
    return hits


def _waive(path: Path, digests) -> Path:
    path.write_text("".join(waiver(d) for d in digests))
    return path


def test_waiving_every_leaked_image_passes_the_leak_gate(copying_result, tmp_path):
    raw = json.loads(copying_result.read_text())["memorization"]
    result = _regate(copying_result, _waive(tmp_path / "r.toml", _hits_per_image(copying_result)))
    assert result.verdict == "pass" and _leaks_gate(result)["status"] == "pass"
    assert _leaks_gate(result)["value"] == 0 and "after waivers" in _leaks_gate(result)["message"]
    assert result.memorization["n_flagged"] == raw["n_flagged"] > 100  # the raw figures stay
    assert all(e["waived_by"] is not None for e in result.memorization["flagged"])
    assert result.review["n_stale"] == 0


def test_the_gate_counts_exactly_the_flags_left_unwaived(copying_result, tmp_path):
    """The default gate allows 5% of 120 samples: 6 unwaived flags pass, 7 fail."""
    hits = _hits_per_image(copying_result)
    for budget, verdict in ((6, "pass"), (7, "fail")):
        kept, total = [], 0
        for digest, n in sorted(hits.items(), key=lambda kv: kv[1]):
            if total + n <= budget:
                kept.append(digest)
                total += n
        assert total == budget, "the fixture has images copied once or twice"
        result = _regate(copying_result, _waive(tmp_path / "r.toml", set(hits) - set(kept)))
        assert result.review["counted"]["n_flagged"] == budget
        assert _leaks_gate(result)["value"] == pytest.approx(budget / 120)
        assert result.verdict == verdict


def test_stale_and_expired_waivers_are_reported_and_waive_nothing(copying_result, tmp_path):
    digest = next(iter(_hits_per_image(copying_result)))
    review = tmp_path / "r.toml"
    review.write_text(waiver(digest, expires="2001-01-01").replace("2025-05-01", "2000-01-01") + waiver("e" * 64))
    result = _regate(copying_result, review)
    assert result.review["n_waived"] == 0 and result.verdict == "fail"
    assert [w["status"] for w in result.review["waivers"]] == ["expired", "unmatched"]


def test_the_cli_honours_a_review_file_found_in_the_working_directory(copying_result, tiny_sets, tmp_path,
                                                                      monkeypatch, capsys):
    snippets = [fill(waiver_snippet(e, any_sample=True))
                for e in json.loads(copying_result.read_text())["memorization"]["leaked_train_examples"]]
    (tmp_path / "ganaudit-review.toml").write_text("\n".join(snippets) + waiver("f" * 64))
    (tmp_path / "ganaudit.toml").write_text(POLICY)  # the policy beside the review file
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "again.json"
    code, stdout, _ = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                              "--holdout", tiny_sets["holdout"], *FAST, "--json", out, capsys=capsys)
    assert code == 0, stdout
    result = json.loads(out.read_text())
    assert result["review"]["file"].endswith("ganaudit-review.toml") and result["review"]["n_stale"] == 1
    assert result["review"]["sha256"] == hashlib.sha256((tmp_path / "ganaudit-review.toml").read_bytes()).hexdigest()
    assert "review    " in stdout and "STALE waiver" in stdout and "matches no flagged sample" in stdout
