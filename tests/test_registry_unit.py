"""The registry gate's parts without a server: signatures, the queue, artifacts, policy, CLI errors."""
from __future__ import annotations

import json
import sqlite3
import sys
import time
import zipfile

import pytest
import torch

from conftest import FIXTURES
from ganaudit.cli import main
from ganaudit.errors import GanauditError
from ganaudit.registry import webhooks
from ganaudit.registry.artifacts import VersionError, find_generator
from ganaudit.registry.client import import_mlflow, is_unavailable, parse_model_uri
from ganaudit.registry.policy import gate_key, policy_digest
from ganaudit.registry.queue import DONE, FAILED, QUEUED, RUNNING, JobQueue

SECRET = "test-secret"


def _signed(body: bytes, delivery_id: str = "d-1", stamp: int | None = None, secret: str = SECRET) -> dict:
    stamp = str(int(time.time()) if stamp is None else stamp)
    return {webhooks.DELIVERY_HEADER: delivery_id, webhooks.TIMESTAMP_HEADER: stamp,
            webhooks.SIGNATURE_HEADER: webhooks.sign(secret, delivery_id, stamp, body)}


BODY = json.dumps({"entity": "model_version", "action": "created", "timestamp": "t",
                   "data": {"name": "gan", "version": "3", "source": "s", "run_id": None, "tags": {}}}).encode()


def test_signature_matches_mlflows_own_signer():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    assert webhooks.sign(SECRET, "abc", "1700000000", BODY) == _generate_hmac_signature(
        SECRET, "abc", "1700000000", BODY.decode())


def test_a_signed_delivery_is_accepted_and_names_its_version():
    delivery = webhooks.verify_delivery(SECRET, _signed(BODY), BODY, time.time(), 300)
    assert delivery.event == webhooks.VERSION_CREATED
    assert webhooks.version_of(delivery, "audited") == ("gan", "3")


@pytest.mark.parametrize("tamper, message", [
    (lambda h: h.pop(webhooks.SIGNATURE_HEADER), "missing X-MLflow-Signature"),
    (lambda h: h.pop(webhooks.DELIVERY_HEADER), "missing X-MLflow-Delivery-Id"),
    (lambda h: h.update({webhooks.SIGNATURE_HEADER: "v1,AAAA"}), "does not match"),
    (lambda h: h.update({webhooks.TIMESTAMP_HEADER: "soon"}), "not a Unix time"),
    (lambda h: h.update(_signed(BODY, secret="other")), "does not match"),
    (lambda h: h.update(_signed(BODY, stamp=int(time.time()) - 3600)), "window"),  # a replay of an old delivery
    (lambda h: h.update(_signed(BODY, stamp=int(time.time()) + 3600)), "window"),
])
def test_bad_missing_or_replayed_signatures_are_refused(tamper, message):
    headers = _signed(BODY)
    tamper(headers)
    with pytest.raises(webhooks.SignatureError, match=message):
        webhooks.verify_delivery(SECRET, headers, BODY, time.time(), 300)


def test_a_changed_body_breaks_the_signature():
    with pytest.raises(webhooks.SignatureError):
        webhooks.verify_delivery(SECRET, _signed(BODY), BODY.replace(b'"3"', b'"4"'), time.time(), 300)


def test_the_gates_own_alias_does_not_trigger_an_audit():
    def alias_event(alias):
        body = json.dumps({"entity": "model_version_alias", "action": "created",
                           "data": {"name": "gan", "alias": alias, "version": "2"}}).encode()
        return webhooks.verify_delivery(SECRET, _signed(body), body, time.time(), 300)

    assert webhooks.version_of(alias_event("audited"), "audited") is None
    assert webhooks.version_of(alias_event("staging"), "audited") == ("gan", "2")


def test_a_signed_body_that_is_not_an_event_is_a_payload_error():
    with pytest.raises(webhooks.PayloadError):
        webhooks.verify_delivery(SECRET, _signed(b"[1, 2]"), b"[1, 2]", time.time(), 300)


def test_queue_dedups_deliveries_and_versions_and_survives_a_restart(tmp_path):
    path = tmp_path / "q.sqlite"
    q = JobQueue(path)
    assert q.accept("d1", ("gan", "1"), "webhook") == "queued"
    assert q.accept("d1", ("gan", "1"), "webhook") == "duplicate delivery"
    assert q.accept("d2", ("gan", "1"), "webhook") == "already queued"
    assert q.accept("d3", None, "webhook") == "ignored"
    job = q.claim()
    assert (job.model, job.version, job.state, job.attempts) == ("gan", "1", RUNNING, 1)
    assert q.claim() is None  # one at a time
    q.close()  # the receiver is killed mid-audit
    q = JobQueue(path)
    assert q.recover() == 1 and q.get("gan", "1").state == QUEUED
    job = q.claim()
    assert job.attempts == 2
    q.retry_later(job, 60.0, "registry down")
    assert q.get("gan", "1").failures == 1 and q.claim() is None  # not before its backoff
    with sqlite3.connect(path) as db:
        db.execute("UPDATE jobs SET not_before = 0")
    job = q.claim()
    q.finish(job, "pass", "run-1")
    assert q.get("gan", "1").state == DONE and q.get("gan", "1").failures == 0
    assert q.enqueue("gan", "1", "reconcile") == "queued"  # gated before: the gate's key decides
    q.fail(q.claim(), "bad policy")
    assert q.counts() == {QUEUED: 0, RUNNING: 0, DONE: 0, FAILED: 1}


def test_an_unopenable_queue_is_a_clear_error(tmp_path):
    (tmp_path / "q.sqlite").write_text("not a database")
    with pytest.raises(GanauditError, match="cannot open it as an sqlite queue"):
        JobQueue(tmp_path / "q.sqlite")


def test_model_uris():
    assert parse_model_uri("models:/gan/3") == parse_model_uri("models:/gan/3/")
    assert parse_model_uri("models:/gan@champion").alias == "champion"
    for bad in ("runs:/abc/model", "models:/gan", "models:/gan/latest", "gan/3"):
        with pytest.raises(GanauditError, match="not a model version URI"):
            parse_model_uri(bad)


def test_unreachable_registry_is_told_apart_from_other_errors():
    try:
        raise ValueError("wrapped") from ConnectionRefusedError(111, "refused")
    except ValueError as e:
        assert is_unavailable(e)
    assert not is_unavailable(ValueError("a bug"))


def test_missing_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(GanauditError, match=r"pip install 'ganaudit\[mlflow\]'"):
        import_mlflow()


def test_generator_is_found_among_artifacts(tmp_path):
    (tmp_path / "generator").mkdir()
    (tmp_path / "generator" / "g.pt2").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hi")
    assert find_generator(tmp_path, None, False).relative == "generator/g.pt2"
    (tmp_path / "generator" / "ema.safetensors").write_bytes(b"x")
    with pytest.raises(VersionError, match="several checkpoints"):
        find_generator(tmp_path, None, False)
    assert find_generator(tmp_path, "generator/ema.safetensors", False).path.name == "ema.safetensors"
    with pytest.raises(VersionError, match="no file '../x.pt2'"):
        find_generator(tmp_path, "../x.pt2", False)
    (tmp_path / "ganaudit.json").write_text(json.dumps({"generator": "generator/ema.safetensors",
                                                        "arch": "m:G", "arch_kwargs": {"z_dim": 8}}))
    found = find_generator(tmp_path, None, False)
    assert found.relative == "generator/ema.safetensors"
    assert found.settings == {"arch": "m:G", "arch_kwargs": '{"z_dim": 8}'}


@pytest.mark.parametrize("manifest, message", [
    ("{", "not readable JSON"), ('{"arch": 3}', "wrong type"), ('{"archh": "m:G"}', "unknown key"), ("[]", "JSON object"),
])
def test_bad_manifests_are_version_errors(tmp_path, manifest, message):
    (tmp_path / "g.pt2").write_bytes(b"x")
    (tmp_path / "ganaudit.json").write_text(manifest)
    with pytest.raises(VersionError, match=message):
        find_generator(tmp_path, None, False)


def test_no_checkpoint_is_a_version_error(tmp_path):
    (tmp_path / "README.md").write_text("weights to follow")
    with pytest.raises(VersionError, match=r"no generator checkpoint .*README.md"):
        find_generator(tmp_path, None, False)


@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated")
def test_mlflow_pytorch_pickle_is_refused_unless_trusted(tmp_path):
    (tmp_path / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: data\n    pytorch_version: 2.4\n")
    (tmp_path / "data").mkdir()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "data" / "model.pth")
    (tmp_path / "data" / "pickle_module_info.txt").write_text("mlflow.pytorch.pickle_module")
    (tmp_path / "extra.pt").write_bytes(b"x")  # outside the flavour's data folder: not the model
    with pytest.raises(VersionError, match="pytorch flavour in pickle format.*--trust-checkpoint"):
        find_generator(tmp_path, None, False)
    assert find_generator(tmp_path, None, True).relative == "data/model.pth"
    script = torch.jit.script(torch.nn.Linear(2, 2))  # TorchScript in the same layout runs no pickled code
    torch.jit.save(script, str(tmp_path / "data" / "model.pth"))
    assert zipfile.is_zipfile(tmp_path / "data" / "model.pth")
    assert find_generator(tmp_path, None, False).relative == "data/model.pth"


def test_policy_digest_follows_settings_and_training_bytes(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    (train / "a.png").write_bytes(b"1")
    base = policy_digest({"num_samples": 100}, {"train": train, "html": tmp_path / "x.html"})
    assert base == policy_digest({"num-samples": 100}, {"train": train, "html": tmp_path / "other.html"})
    assert base != policy_digest({"num_samples": 101}, {"train": train})
    (train / "a.png").write_bytes(b"2")
    assert base != policy_digest({"num_samples": 100}, {"train": train})
    assert gate_key("gan", "1", base, "0.1.0", None) != gate_key("gan", "1", base, "0.1.0", "run-9")


def test_gate_usage_errors_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["mlflow", "gate", "runs:/x/y"]) == 2
    assert "not a model version URI" in capsys.readouterr().err
    assert main(["mlflow", "gate", "models:/gan/1"]) == 2
    assert "--tracking-uri" in capsys.readouterr().err


def test_serve_refuses_to_run_without_a_secret(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("GANAUDIT_WEBHOOK_SECRET", raising=False)
    assert main(["mlflow", "serve", "--queue", str(tmp_path / "q.sqlite"), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "GANAUDIT_WEBHOOK_SECRET" in capsys.readouterr().err


def test_an_internal_error_exits_3_never_1(capsys, monkeypatch):
    import ganaudit.registry.mlflow_gate as gate

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gate, "gate_version", broken)
    assert main(["mlflow", "gate", "models:/gan/1", "--tracking-uri", "http://127.0.0.1:9",
                 "--train", str(FIXTURES / "data" / "train")]) == 3
    assert capsys.readouterr().err.strip().startswith("internal error: RuntimeError: a bug (please report: ganaudit ")


def test_an_unreachable_registry_is_a_clear_error_within_seconds(capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    assert main(["mlflow", "gate", "models:/gan/1", "--tracking-uri", f"http://127.0.0.1:{port}",
                 "--train", str(FIXTURES / "data" / "train")]) == 2
    assert "MLflow registry unreachable" in capsys.readouterr().err
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("flags, message", [
    (["--tolerance", "0"], "must be positive"), (["--retry-max", "-1"], "must be positive"),
    (["--reconcile-every", "0"], "must be positive"), (["--port", "70000"], "--port must be in 0..65535"),
])
def test_serve_rejects_bad_settings(capsys, monkeypatch, tmp_path, flags, message):
    monkeypatch.setenv("GANAUDIT_WEBHOOK_SECRET", "s")
    assert main(["mlflow", "serve", "--queue", str(tmp_path / "q.sqlite"), "--tracking-uri", "http://127.0.0.1:9",
                 *flags]) == 2
    assert message in capsys.readouterr().err
