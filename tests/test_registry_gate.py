"""`ganaudit mlflow gate` against a real MLflow server: runs, tags, aliases, artifacts, dedup, baselines."""
from __future__ import annotations

import json

import pytest

from conftest import FIXTURES
from ganaudit.cli import main
from registry_support import AUDIT_ARGS, audit_runs, mlflow_server, register, unique  # noqa: F401 (fixture)

GENERATORS = FIXTURES / "generators"
pytestmark = pytest.mark.slow


def _gate(server, uri: str, tmp_path, *extra: str) -> int:
    return main(["mlflow", "gate", uri, "--tracking-uri", server.url, "--cache-dir", str(tmp_path / "cache"),
                 "--config", str(tmp_path / "ganaudit.toml"), *AUDIT_ARGS, *extra])


@pytest.fixture
def policy(tmp_path):
    (tmp_path / "ganaudit.toml").write_text("# the repository's policy: the default gates\n")
    return tmp_path / "ganaudit.toml"


def _result_of(client, run_id, tmp_path) -> dict:
    path = client.download_artifacts(run_id, "result.json", str(tmp_path))
    return json.loads(open(path).read())


def test_gate_logs_tags_and_moves_the_alias_once(mlflow_server, tmp_path, policy, capsys):
    client, model = mlflow_server.client(), unique("gan")
    good = register(client, model, {"dcgan.pt2": GENERATORS / "dcgan.pt2"})
    bad = register(client, model, {"leaky.pt2": GENERATORS / "leaky.pt2"})

    assert _gate(mlflow_server, f"models:/{model}/{good}", tmp_path) == 0
    version = client.get_model_version(model, good)
    tags = version.tags
    assert tags["ganaudit.verdict"] == "pass" and tags["ganaudit.failed_gates"] == "none"
    assert client.get_model_version_by_alias(model, "audited").version == good
    run = client.get_run(tags["ganaudit.run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ganaudit.model_version"] == good
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.html", "result.json", "junit.xml"}
    result = _result_of(client, run.info.run_id, tmp_path)
    assert result["verdict"] == "pass" and result["generator"]["n_samples"] == 200
    assert run.data.metrics["ganaudit.memorization.flagged_fraction"] == result["memorization"]["flagged_fraction"]
    assert run.data.metrics["ganaudit.coverage.modes.covered"] == result["coverage"]["modes"]["covered"] == 12
    assert tags["ganaudit.modes_covered"] == "12/12"
    assert tags["ganaudit.train_digest"] == result["train"]["fingerprint"]
    assert run.data.params["ganaudit.artifact"] == "dcgan.pt2"
    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert digests["training"] == result["train"]["fingerprint"][:32]

    assert _gate(mlflow_server, f"models:/{model}/{bad}", tmp_path) == 1
    tags = client.get_model_version(model, bad).tags
    assert tags["ganaudit.verdict"] == "fail" and tags["ganaudit.failed_gates"] == "leaks"
    assert float(tags["ganaudit.flagged_fraction"]) > 0.05
    assert client.get_model_version_by_alias(model, "audited").version == good  # the alias stays on the good one

    capsys.readouterr()
    assert _gate(mlflow_server, f"models:/{model}@audited", tmp_path) == 0  # same policy: no second run
    assert "already gated" in capsys.readouterr().out
    assert len(audit_runs(client, model, good)) == 1
    assert _gate(mlflow_server, f"models:/{model}/{good}", tmp_path, "--force") == 0
    assert len(audit_runs(client, model, good)) == 2

    # A stricter policy in the repository: the version now fails and loses the alias.
    policy.write_text('[[gates]]\nname = "strict"\nmetric = "coverage.coverage"\nop = ">="\nthreshold = 0.99\n')
    assert _gate(mlflow_server, f"models:/{model}/{good}", tmp_path) == 1
    assert client.get_model_version(model, good).tags["ganaudit.failed_gates"] == "strict"
    assert "audited" not in client.get_registered_model(model).aliases


def test_baseline_alias_compares_with_the_champions_result(mlflow_server, tmp_path, policy, capsys):
    client, model = mlflow_server.client(), unique("gan")
    champion = register(client, model, {"dcgan.pt2": GENERATORS / "dcgan.pt2"})
    candidate = register(client, model, {"dcgan.torchscript.pt": GENERATORS / "dcgan.torchscript.pt"})
    # No champion yet (the first release): audited without a baseline, and the tag says so.
    assert _gate(mlflow_server, f"models:/{model}/{candidate}", tmp_path, "--baseline-alias", "champion") == 0
    tags = client.get_model_version(model, candidate).tags
    assert tags["ganaudit.verdict"] == "pass" and tags["ganaudit.baseline"] == "none (alias champion not set)"

    client.set_registered_model_alias(model, "champion", champion)  # a champion nobody audited: bad input
    capsys.readouterr()
    assert _gate(mlflow_server, f"models:/{model}/{candidate}", tmp_path, "--baseline-alias", "champion") == 2
    assert "has no ganaudit result to compare with" in capsys.readouterr().err
    assert _gate(mlflow_server, f"models:/{model}/{champion}", tmp_path) == 0
    assert _gate(mlflow_server, f"models:/{model}/{candidate}", tmp_path, "--baseline-alias", "champion") == 0
    tags = client.get_model_version(model, candidate).tags
    assert tags["ganaudit.baseline"] == f"version {champion} (champion)"
    assert len(audit_runs(client, model, candidate)) == 2  # a new baseline is a new audit
    result = _result_of(client, tags["ganaudit.run_id"], tmp_path)
    champion_run = client.get_run(client.get_model_version(model, champion).tags["ganaudit.run_id"])
    assert result["baseline"]["verdict"] == "pass"
    assert result["baseline"]["generator_sha256"] == champion_run.data.params["ganaudit.generator.sha256"]
    rules = [g for g in result["gates"] if g["name"].startswith("baseline:")]
    assert {g["metric"] for g in rules} >= {"memorization.flagged_fraction", "coverage.recall"}
