"""The metric catalog holds the schema, the gate, the summary and the report together; light imports."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from ganaudit import catalog, gate

SCHEMA = REPO / "ganaudit" / "schema" / "result.schema.json"


def test_the_shipped_schema_carries_the_catalog_descriptions():
    schema = json.loads(SCHEMA.read_text())
    assert catalog.schema_with_catalog(schema) == schema, (
        "the schema's descriptions differ from ganaudit/catalog.py: rewrite it with catalog.schema_with_catalog")


def test_every_figure_path_is_declared_by_the_schema():
    schema = json.loads(SCHEMA.read_text())
    broken = dict(schema, properties=dict(schema["properties"], coverage={"type": "object", "properties": {}}))
    with pytest.raises(KeyError):
        catalog.schema_with_catalog(broken)


def test_the_gate_knows_exactly_the_numeric_catalog_figures():
    assert gate.METRICS == catalog.gate_metrics()
    assert "memorization.leaked_train_examples" not in gate.METRICS  # a list, not a number
    assert gate.METRICS["coverage.recall"] is True and gate.METRICS["coverage.fd"] is False
    with pytest.raises(Exception, match="unknown metric"):
        gate.gates_from_config([{"metric": "coverage.nonsense", "op": ">=", "threshold": 1}])


def test_templates_fill_paths_and_formats():
    result = {"memorization": {"n_flagged": 3, "ci": [0.0125, 0.5]}, "coverage": {"modes": {"covered": 2}}}
    text = catalog.render("{memorization.n_flagged} flagged, CI {memorization.ci.0:pct}–{memorization.ci.1:num2}, "
                          "{coverage.modes.covered}/{coverage.modes.total}", result)
    assert text == "3 flagged, CI 1.2%–0.50, 2/n/a"
    assert catalog.format_value([1, 2, 3], "len") == "3"
    with pytest.raises(ValueError, match="unknown figure format"):
        catalog.format_value(1.0, "bogus")


@pytest.fixture(scope="module")
def result(tiny_sets, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("catalog") / "r.json"
    code, _, _ = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                         "--holdout", tiny_sets["holdout"], "--num-samples", "60", "--json", out)
    assert code in (0, 1)
    return json.loads(out.read_text())


def test_headline_cards_and_summary_come_from_the_catalog(result):
    cards = catalog.headline_figures(result)
    paths = [c["path"] for c in cards]
    expected = [f.path for f in catalog.FIGURES if f.headline and not (f.optional and catalog.lookup(result, f.path) is None)]
    assert paths == expected
    flagged = cards[paths.index("memorization.flagged_fraction")]
    assert flagged["value"] == f"{100 * result['memorization']['flagged_fraction']:.1f}%"
    assert f"{result['memorization']['n_flagged']} of {result['memorization']['n_samples']}" in flagged["note"]
    modes = result["coverage"]["modes"]
    assert cards[paths.index("coverage.modes.covered_fraction")]["value"] == f"{modes['covered']}/{modes['total']}"
    labels = [label for _, label, _ in catalog.summary_figures(result)]
    assert labels == [f.label for f in catalog.FIGURES if f.summary]


def test_headline_cards_in_the_report(result, tmp_path):
    from ganaudit.report.html import render_html
    from ganaudit.result import AuditResult

    html = render_html(AuditResult.from_dict(result))
    for card in catalog.headline_figures(result):
        assert f'data-metric="{card["path"]}"' in html


@pytest.mark.parametrize("module", ["ganaudit.config", "ganaudit.gate", "ganaudit.result", "ganaudit.catalog",
                                    "ganaudit.report.html", "ganaudit.report.junit", "ganaudit.report.summary",
                                    "ganaudit.cli"])
def test_light_modules_load_no_torch(module):
    probe = f"import sys, {module}; heavy = [m for m in ('torch', 'faiss', 'numpy') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True).stdout
    heavy = json.loads(out.strip().replace("'", '"'))
    assert "torch" not in heavy and "faiss" not in heavy, f"{module} imports {heavy}"
