"""Versions that cannot be audited are findings (``ganaudit.verdict = error``), and the formats a version may ship."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES, BankGenerator
from ganaudit.cli import main
from registry_support import AUDIT_ARGS, audit_runs, mlflow_server, register, unique  # noqa: F401 (fixture)

GENERATORS = FIXTURES / "generators"
pytestmark = pytest.mark.slow


def _gate(server, uri: str, tmp_path, *extra: str) -> int:
    (tmp_path / "ganaudit.toml").write_text("")
    return main(["mlflow", "gate", uri, "--tracking-uri", server.url, "--cache-dir", str(tmp_path / "cache"),
                 "--config", str(tmp_path / "ganaudit.toml"), *AUDIT_ARGS, *extra])


@pytest.mark.parametrize("files, reason", [
    ({"README.md": "weights to follow"}, "no generator checkpoint among the version's artifacts"),
    ({"generator.pt2": b"PK\x03\x04 not really a program"}, "--generator generator.pt2: not a checkpoint ganaudit can read"),
    ({"g.pt": GENERATORS / "dcgan_state_dict.pt"}, "holds weights only: pass --arch"),
])
def test_an_unauditable_version_is_tagged_error_and_loses_the_alias(mlflow_server, tmp_path, capsys, files, reason):
    client, model = mlflow_server.client(), unique("broken")
    version = register(client, model, files)
    client.set_registered_model_alias(model, "audited", version)  # set by hand, before any audit
    assert _gate(mlflow_server, f"models:/{model}/{version}", tmp_path) == 2
    assert reason in capsys.readouterr().err
    tags = client.get_model_version(model, version).tags
    assert tags["ganaudit.verdict"] == "error" and reason in tags["ganaudit.reason"]
    assert "audited" not in client.get_registered_model(model).aliases
    assert audit_runs(client, model) == []


def test_state_dict_with_its_architecture_in_ganaudit_json(mlflow_server, tmp_path):
    client, model = mlflow_server.client(), unique("weights")
    manifest = {"generator": "weights/g.pt", "arch": "fixtures.dcgan:Generator", "arch_kwargs": {"z_dim": 64, "ngf": 32}}
    version = register(client, model, {"weights/g.pt": GENERATORS / "dcgan_state_dict.pt", "notes.pt": b"not it",
                                       "ganaudit.json": json.dumps(manifest)})
    assert _gate(mlflow_server, f"models:/{model}/{version}", tmp_path) == 0
    run = client.get_run(client.get_model_version(model, version).tags["ganaudit.run_id"])
    assert run.data.params["ganaudit.artifact"] == "weights/g.pt"


def test_mlflow_pytorch_flavour_pickle_is_refused_unless_trusted(mlflow_server, tmp_path, capsys):
    import mlflow

    client, model = mlflow_server.client(), unique("flavour")
    bank = torch.rand(16, 3, 32, 32)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        with mlflow.start_run():
            info = mlflow.pytorch.log_model(BankGenerator(bank, z_dim=8), name="model", serialization_format="pickle",
                                            pip_requirements=["torch"])
        version = str(mlflow.register_model(info.model_uri, model).version)
    finally:
        mlflow.set_tracking_uri(previous)
    assert _gate(mlflow_server, f"models:/{model}/{version}", tmp_path) == 2
    assert "pytorch flavour in pickle format" in capsys.readouterr().err
    assert client.get_model_version(model, version).tags["ganaudit.verdict"] == "error"
    # Trusted, it is loaded (BankGenerator is importable here) and audited like any generator.
    assert _gate(mlflow_server, f"models:/{model}/{version}", tmp_path, "--trust-checkpoint") in (0, 1)
    tags = client.get_model_version(model, version).tags
    assert tags["ganaudit.verdict"] in ("pass", "fail") and "ganaudit.reason" not in tags
    assert client.get_run(tags["ganaudit.run_id"]).data.params["ganaudit.generator.format"] == "trusted-pickle"
