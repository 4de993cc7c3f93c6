"""The release gate: declarative conditions, config errors, baseline comparison, determinism."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli
from ganaudit import gate
from ganaudit.errors import GanauditError

FAST = ("--num-samples", "120", "--tta", "none")


def _lookup(values: dict):
    return values.get


@pytest.mark.parametrize("g", gate.DEFAULT_GATES, ids=lambda g: g.name)
def test_each_default_gate_passes_and_fails(g):
    good = g.threshold - 0.01 if g.op in ("<=", "<") else g.threshold + 0.01
    bad = g.threshold + 0.01 if g.op in ("<=", "<") else g.threshold - 0.01
    ok, broken = gate.evaluate((g,), _lookup({g.metric: good}))[0], gate.evaluate((g,), _lookup({g.metric: bad}))[0]
    assert ok["passed"] and ok["status"] == "pass"
    assert not broken["passed"] and broken["status"] == g.severity
    assert str(g.threshold) in broken["message"] or f"{g.threshold:g}" in broken["message"]


def test_verdict_fails_only_on_fail_severity_unless_warn_only():
    rows = [{"status": "pass"}, {"status": "warn"}]
    assert gate.verdict(rows) == "pass"
    rows.append({"status": "fail"})
    assert gate.verdict(rows) == "fail" and gate.verdict(rows, warn_only=True) == "pass"


def test_a_metric_not_computed_is_skipped_not_passed():
    g = gate.Gate("ct", "memorization.ct_statistic", ">=", -3.0)
    row = gate.evaluate((g,), _lookup({}))[0]
    assert row["status"] == "skipped" and row["passed"] is None


@pytest.mark.parametrize("entry, message", [
    ({"metric": "coverage.coverage", "op": ">=", "threshold": 0.5, "treshold": 1}, "unknown key"),
    ({"metric": "coverage.covrage", "op": ">=", "threshold": 0.5}, "unknown metric"),
    ({"metric": "coverage.coverage", "op": "=>", "threshold": 0.5}, "op must be one of"),
    ({"metric": "coverage.coverage", "op": ">=", "threshold": "high"}, "threshold must be a number"),
    ({"metric": "coverage.coverage", "op": ">="}, "missing threshold"),
    ({"metric": "coverage.coverage", "op": ">=", "threshold": 0.5, "severity": "fatal"}, "severity"),
])
def test_bad_gate_config_is_an_error(entry, message):
    with pytest.raises(GanauditError, match=message):
        gate.gates_from_config([entry])


def test_baseline_rule_both_outcomes():
    rule = gate.BaselineRule("coverage.coverage", 0.05)
    held = gate.evaluate_baseline((rule,), _lookup({"coverage.coverage": 0.62}), _lookup({"coverage.coverage": 0.66}))[0]
    dropped = gate.evaluate_baseline((rule,), _lookup({"coverage.coverage": 0.60}), _lookup({"coverage.coverage": 0.66}))[0]
    assert held["status"] == "pass" and held["threshold"] == pytest.approx(0.61)
    assert dropped["status"] == "fail" and "against baseline 0.66" in dropped["message"]
    rise = gate.BaselineRule("memorization.flagged_fraction", 0.5, relative=True)
    row = gate.evaluate_baseline((rise,), _lookup({"memorization.flagged_fraction": 0.031}),
                                 _lookup({"memorization.flagged_fraction": 0.02}))[0]
    assert row["op"] == "<=" and row["threshold"] == pytest.approx(0.03) and row["status"] == "fail"


def test_gates_from_a_config_file_decide_the_exit_code(tiny_sets, tmp_path, capsys):
    cfg = tmp_path / "ganaudit.toml"
    cfg.write_text('[[gates]]\nname = "strict"\nmetric = "coverage.precision"\nop = ">="\nthreshold = 1.01\n')
    code, stdout, _ = run_cli("check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
                              "--holdout", tiny_sets["holdout"], *FAST, "--config", cfg, capsys=capsys)
    assert code == 1 and "gate strict" in stdout
    cfg.write_text('[[gates]]\nmetric = "coverage.precison"\nop = ">="\nthreshold = 0.5\n')
    code, _, err = run_cli("check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
                           "--config", cfg, capsys=capsys)
    assert code == 2 and "unknown metric 'coverage.precison'" in err


def test_baseline_comparison_on_real_runs(tiny_sets, tmp_path, capsys):
    common = ("--train", tiny_sets["train"], "--holdout", tiny_sets["holdout"], *FAST)
    good = tmp_path / "good.json"
    assert run_cli("check", "--generator", tiny_sets["fresh_gen"], *common, "--json", good)[0] == 0
    same = tmp_path / "same.json"
    code, _, _ = run_cli("check", "--generator", tiny_sets["fresh_gen"], *common, "--baseline", good, "--json", same)
    rows = [g for g in json.loads(same.read_text())["gates"] if g["name"].startswith("baseline:")]
    assert code == 0 and rows and all(g["status"] == "pass" for g in rows)
    worse = tmp_path / "worse.json"
    code, stdout, _ = run_cli("check", "--generator", tiny_sets["copy_gen"], *common, "--baseline", good,
                              "--json", worse, "--config", _no_gates(tmp_path), capsys=capsys)
    result = json.loads(worse.read_text())
    regressed = {g["name"] for g in result["gates"] if g["status"] == "fail"}
    assert code == 1 and "baseline:memorization.flagged_fraction" in regressed
    assert result["baseline"]["path"] == str(good)


def _no_gates(tmp_path):
    """A config whose only gate never fails, so only the baseline can fail the run."""
    cfg = tmp_path / "lenient.toml"
    cfg.write_text('[[gates]]\nmetric = "coverage.density"\nop = ">="\nthreshold = -1\n')
    return cfg


def test_unreadable_baseline_is_an_error_before_the_run(tiny_sets, tmp_path, capsys):
    bad = tmp_path / "old.json"
    bad.write_text("[]")
    code, _, err = run_cli("check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
                           "--baseline", bad, capsys=capsys)
    assert code == 2 and "--baseline" in err


def test_same_inputs_and_seed_give_the_same_numbers(tiny_sets, tmp_path):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p in paths:
        run_cli("check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
                "--holdout", tiny_sets["holdout"], "--num-samples", "150", "--json", p)
    a, b = (json.loads(p.read_text()) for p in paths)
    for r in (a, b):
        r.pop("timings")
        r["config"].pop("json")
    assert a == b
