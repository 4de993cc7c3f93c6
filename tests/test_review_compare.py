"""ganaudit compare on results derived from a real one: directions from
ganaudit.gate.METRICS, modes gained and lost, leaks new, known and gone, and bad inputs."""
from __future__ import annotations

import copy
import json

import pytest

from conftest import run_cli
from ganaudit.errors import GanauditError
from ganaudit.gate import METRICS
from ganaudit.result import dig
from ganaudit.review.compare import compare_results


@pytest.fixture(scope="module")
def base(tiny_sets, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("base") / "r.json"
    code, _, _ = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                         "--holdout", tiny_sets["holdout"], "--num-samples", "120", "--tta", "none", "--json", out)
    assert code == 1
    return json.loads(out.read_text())


def _set(result: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = result
    for part in parents:  # sections a run does not make (recovery, regions) are null: give them a body
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[last] = value


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_each_figure_changes_in_its_metrics_direction(base, metric):
    baseline = copy.deepcopy(base)
    if dig(baseline, metric) is None:  # not computed by this run (the Inception Score): give it a value
        _set(baseline, metric, 1.0)
    value = dig(baseline, metric)
    for delta in (0.5, -0.5, 0.0):
        candidate = copy.deepcopy(baseline)
        _set(candidate, metric, value + delta)
        row = next(r for r in compare_results(baseline, candidate)["figures"] if r["metric"] == metric)
        assert row["baseline"] == value and row["change"] == pytest.approx(delta)
        expected = "same" if delta == 0 else "better" if (delta > 0) == METRICS[metric] else "worse"
        assert row["direction"] == expected and row["higher_is_better"] is METRICS[metric]


def test_a_figure_missing_on_one_side_has_no_direction(base):
    candidate = copy.deepcopy(base)
    _set(candidate, "memorization.mia_auc", None)
    row = next(r for r in compare_results(base, candidate)["figures"] if r["metric"] == "memorization.mia_auc")
    assert (row["candidate"], row["change"], row["direction"]) == (None, None, "n/a")


def test_modes_gained_and_lost(base):
    baseline, candidate = copy.deepcopy(base), copy.deepcopy(base)
    modes = [m["name"] for m in base["coverage"]["modes"]["per_mode"]]
    baseline["coverage"]["modes"]["per_mode"][0]["covered"] = False
    candidate["coverage"]["modes"]["per_mode"][1]["covered"] = False
    got = compare_results(baseline, candidate)["modes"]
    assert got == {"comparable": True, "reason": "", "gained": [modes[0]], "lost": [modes[1]], "missing": [modes[1]]}
    candidate["coverage"]["modes"]["source"] = "kmeans"
    assert compare_results(baseline, candidate)["modes"]["comparable"] is False


def _leak_sets(base: dict) -> tuple[dict, dict, list[dict]]:
    leaked = base["memorization"]["leaked_train_examples"]
    baseline, candidate = copy.deepcopy(base), copy.deepcopy(base)
    baseline["memorization"]["leaked_train_examples"] = copy.deepcopy(leaked[:6])   # images 0-5
    candidate["memorization"]["leaked_train_examples"] = copy.deepcopy(leaked[3:9])  # images 3-8
    return baseline, candidate, leaked


@pytest.mark.parametrize("strip_hashes", [False, True])
def test_leaked_images_new_known_and_gone(base, strip_hashes):
    baseline, candidate, leaked = _leak_sets(base)
    if strip_hashes:  # a baseline written before content hashes: matched by path
        for e in baseline["memorization"]["leaked_train_examples"]:
            e.pop("train_sha256")
    leaks = compare_results(baseline, candidate)["leaks"]
    assert leaks["matched_by"] == ("path" if strip_hashes else "content")
    paths = {k: sorted(r["train_path"] for r in leaks[k]) for k in ("new", "known", "gone")}
    assert paths == {"new": sorted(e["train_path"] for e in leaked[6:9]),
                     "known": sorted(e["train_path"] for e in leaked[3:6]),
                     "gone": sorted(e["train_path"] for e in leaked[0:3])}
    known = {r["train_path"]: r for r in leaks["known"]}
    for e in leaked[3:6]:
        assert known[e["train_path"]]["baseline_count"] == known[e["train_path"]]["candidate_count"] == e["count"]


def test_a_renamed_training_image_is_still_known_by_content(base):
    baseline, candidate, leaked = _leak_sets(base)
    candidate["memorization"]["leaked_train_examples"][0]["train_path"] = "moved/elsewhere.png"
    leaks = compare_results(baseline, candidate)["leaks"]
    assert "moved/elsewhere.png" in [r["train_path"] for r in leaks["known"]]
    assert leaked[3]["train_path"] not in [r["train_path"] for r in leaks["gone"]]


def test_verdicts_gates_and_notes(base):
    candidate = copy.deepcopy(base)
    candidate["verdict"] = "pass"
    candidate["gates"][0]["status"] = "pass"
    candidate["memorization"]["n_samples"] = 500
    c = compare_results(base, candidate)
    assert (c["baseline"]["verdict"], c["candidate"]["verdict"]) == ("fail", "pass")
    assert c["gates"][0] == {"name": base["gates"][0]["name"], "baseline": base["gates"][0]["status"], "candidate": "pass"}
    assert any("sample counts differ" in n for n in c["notes"])
    assert any("same generator file" in n for n in c["notes"])


def test_different_embedders_cannot_be_compared(base, tmp_path, capsys):
    other = copy.deepcopy(base)
    other["embedder"]["name"] = "inception"
    with pytest.raises(GanauditError, match="different feature spaces"):
        compare_results(base, other)
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(other))
    code, _, err = run_cli("compare", tmp_path / "a.json", tmp_path / "b.json", "--html", tmp_path / "d.html",
                           capsys=capsys)
    assert code == 2 and "different feature spaces" in err and not (tmp_path / "d.html").exists()


def test_unreadable_inputs_are_one_line_errors(base, tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "bad.json").write_text("{not json")
    for args, message in (((tmp_path / "nope.json", tmp_path / "a.json"), "baseline"),
                          ((tmp_path / "a.json", tmp_path / "bad.json"), "not a ganaudit JSON result")):
        code, _, err = run_cli("compare", *args, capsys=capsys)
        assert code == 2 and message in err and err.count("\n") == 1
    code, _, err = run_cli("compare", tmp_path / "a.json", capsys=capsys)
    assert code == 2 and err.startswith("error:")
