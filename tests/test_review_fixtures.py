"""The review workflow on the shipped fixtures (docs/review.md): the leaky candidate fails,
the reviewer waives its leaked training images, the re-audit passes against the released DCGAN,
and compare and the model card say what changed."""
from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from conftest import FIXTURES, run_cli
from ganaudit.cli import main
from ganaudit.review.evidence import evidence_table
from ganaudit.review.waivers import waiver_snippet
from test_review_waivers import fill

pytestmark = pytest.mark.slow  # three audits of 300 samples: about 90 s on two cores

TRAIN = FIXTURES / "data" / "train"
COMMON = ("--train", TRAIN, "--holdout", FIXTURES / "data" / "holdout", "--num-samples", "300")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The released model (dcgan) and the candidate (leaky), audited once each."""
    root = tmp_path_factory.mktemp("review-fixtures")
    codes = {}
    for name in ("dcgan", "leaky"):
        codes[name] = run_cli("check", "--generator", FIXTURES / "generators" / f"{name}.pt2", *COMMON,
                              "--json", root / f"{name}.json")[0]
    assert codes == {"dcgan": 0, "leaky": 1}
    return {"root": root, **{n: json.loads((root / f"{n}.json").read_text()) for n in ("dcgan", "leaky")}}


def _leaked_hashes(result: dict) -> set[str]:
    return {e["train_sha256"] for e in result["memorization"]["leaked_train_examples"]}


def test_flagged_pairs_carry_the_hash_of_the_training_file_they_copy(runs):
    manifest = json.loads((FIXTURES / "generators" / "leaky_manifest.json").read_text())
    planted = {e["train_path"] for e in manifest["bank"]}
    flagged = runs["leaky"]["memorization"]["flagged"]
    assert {e["train_path"] for e in flagged} & planted
    for entry in flagged:
        assert entry["train_sha256"] == hashlib.sha256((TRAIN / entry["train_path"]).read_bytes()).hexdigest()
        assert entry["train_class"] == entry["train_path"].split("/")[0]


def test_compare_release_against_candidate(runs, capsys):
    root = runs["root"]
    # main() directly: run_cli would check the comparison's --json against the result schema
    code = main(["compare", str(root / "dcgan.json"), str(root / "leaky.json"), "--html", str(root / "diff.html"),
                 "--json", str(root / "diff.json")])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("ganaudit compare: baseline PASS -> candidate FAIL")
    c = json.loads((root / "diff.json").read_text())
    new, known = {r["train_sha256"] for r in c["leaks"]["new"]}, {r["train_sha256"] for r in c["leaks"]["known"]}
    assert new | known == _leaked_hashes(runs["leaky"]) and not new & known
    assert known == _leaked_hashes(runs["dcgan"]) & _leaked_hashes(runs["leaky"])
    assert f"{len(new)} training image(s) newly leaked" in out
    rows = {r["metric"]: r for r in c["figures"]}
    assert rows["memorization.flagged_fraction"]["direction"] == "worse"
    assert rows["memorization.flagged_fraction"]["change"] == pytest.approx(
        runs["leaky"]["memorization"]["flagged_fraction"] - runs["dcgan"]["memorization"]["flagged_fraction"])
    assert c["modes"]["comparable"] and c["modes"]["lost"] == []
    html = (root / "diff.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert all(metric in html for metric in rows)
    code, out, _ = run_cli("compare", root / "leaky.json", root / "dcgan.json", capsys=capsys)
    assert code == 0 and f"{len(_leaked_hashes(runs['leaky']) - _leaked_hashes(runs['dcgan']))} no longer leaked" in out


def test_waived_candidate_passes_against_the_release(runs, capsys):
    root = runs["root"]
    snippets = [fill(waiver_snippet(row["snippet_entry"], any_sample=True), reason="bank image, licensed")
                for row in evidence_table(runs["leaky"])]
    (root / "ganaudit-review.toml").write_text("\n".join(snippets))
    code, out, _ = run_cli("check", "--generator", FIXTURES / "generators" / "leaky.pt2", *COMMON,
                           "--review-file", root / "ganaudit-review.toml", "--baseline", root / "dcgan.json",
                           "--json", root / "again.json", "--html", root / "again.html",
                           "--model-card", root / "card.md", capsys=capsys)
    assert code == 0, out
    again = json.loads((root / "again.json").read_text())
    assert again["review"]["n_waived"] == again["memorization"]["n_flagged"] == runs["leaky"]["memorization"]["n_flagged"]
    assert all(g["status"] == "pass" for g in again["gates"] if g["name"] in ("leaks", "baseline:memorization.flagged_fraction"))
    comparison = again["baseline"]["comparison"]
    assert {r["train_sha256"] for r in comparison["leaks"]["new"]} == _leaked_hashes(runs["leaky"]) - _leaked_hashes(runs["dcgan"])
    assert all(r["candidate_waived"] == r["candidate_count"] for r in comparison["leaks"]["new"])
    assert 'id="compare"' in (root / "again.html").read_text()
    card = (root / "card.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["ganaudit/memorization.flagged_fraction_after_waivers"] == 0.0
    assert metrics["ganaudit/memorization.flagged_fraction"] == again["memorization"]["flagged_fraction"] > 0.2
    assert "**Verdict: PASS.**" in card
