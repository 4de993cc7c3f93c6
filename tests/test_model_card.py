"""--model-card: the YAML metadata parses, in the Hugging Face model-index format (read
back with huggingface_hub's own parser), and holds the audit's figures."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import run_cli
from ganaudit.result import dig
from ganaudit.review.model_card import CARD_METRICS, to_yaml

NAME = 'g "quoted" ü 🙂 \\ <b>'


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    assert body.lstrip().startswith("## Pre-release audit (ganaudit)")
    return yaml.safe_load(head)


@pytest.fixture(scope="module")
def card(tiny_sets, tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("card")
    generator = root / f"{NAME}.pt"
    shutil.copy(tiny_sets["copy_gen"], generator)
    first = root / "first.json"
    run_cli("check", "--generator", generator, "--train", tiny_sets["train"], "--holdout", tiny_sets["holdout"],
            "--num-samples", "120", "--tta", "none", "--json", first)
    leaked = json.loads(first.read_text())["memorization"]["leaked_train_examples"]
    review = root / "review.toml"
    review.write_text("".join(f'[[waivers]]\ntrain_sha256 = "{e["train_sha256"]}"\nreviewer = "Ana | Lima"\n'
                              f'date = 2025-05-01\nreason = "generic\\nshape"\n' for e in leaked[:10]))
    code, _, _ = run_cli("check", "--generator", generator, "--train", tiny_sets["train"], "--holdout",
                         tiny_sets["holdout"], "--num-samples", "120", "--tta", "none", "--review-file", review,
                         "--json", root / "r.json", "--model-card", root / "card.md")
    assert code == 1
    return (root / "card.md").read_text(), json.loads((root / "r.json").read_text())


def test_the_yaml_parses_and_holds_the_figures(card):
    text, result = card
    index = _front_matter(text)["model-index"]
    assert index[0]["name"] == NAME
    (entry,) = index[0]["results"]
    assert entry["task"]["type"] == "unconditional-image-generation"
    got = {m["type"]: m["value"] for m in entry["metrics"]}
    expected = {f"ganaudit/{path}": dig(result, path) for path, _ in CARD_METRICS
                if dig(result, path) is not None and path != "coverage.inception_score"}
    assert got.items() >= expected.items() and len(expected) >= 12
    assert got["ganaudit/memorization.flagged_fraction_after_waivers"] == result["review"]["counted"]["flagged_fraction"]
    assert got["ganaudit/memorization.flagged_fraction"] == result["memorization"]["flagged_fraction"] > 0.9
    assert all(m["verified"] is False for m in entry["metrics"])


def test_huggingface_hub_reads_the_model_index(card):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    text, result = card
    name, evals = model_index_to_eval_results(_front_matter(text)["model-index"])
    assert name == NAME
    by_type = {e.metric_type: e for e in evals}
    assert by_type["ganaudit/coverage.precision"].metric_value == result["coverage"]["precision"]
    assert {e.task_type for e in evals} == {"unconditional-image-generation"}
    assert {e.dataset_type for e in evals} == {"train"}
    parsed = ModelCard(text).data.eval_results
    assert [(e.metric_type, e.metric_value) for e in parsed] == [(e.metric_type, e.metric_value) for e in evals]


def test_the_markdown_gives_verdict_gates_and_waivers(card):
    text, result = card
    assert "**Verdict: FAIL.**" in text
    for gate in result["gates"]:
        assert f"| {gate['name']} | `{gate['metric']}`" in text
    waiver_rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 10 |")]
    assert len(waiver_rows) == 2 and all("Ana \\| Lima" in row and "generic shape" in row for row in waiver_rows)


def test_yaml_writer_round_trips_awkward_values():
    data = {"a": [{"b": NAME, "c": [1, 2.5, None, True]}, {"d": {}}], "e": "x: y # z", "f": "\x7f\x85\u2028"}
    assert yaml.safe_load(to_yaml(data)) == data
