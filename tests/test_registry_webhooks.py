"""`ganaudit mlflow serve` driven by a real MLflow server's webhooks, and its faults.

MLflow delivers to http://127.0.0.1 only when its server runs with
MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true (see
registry_support.MlflowServer); production receivers sit behind https.
"""
from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from conftest import FIXTURES
from registry_support import (
    SECRET, MlflowServer, Receiver, audit_runs, mlflow_server, register, signed_headers, unique,  # noqa: F401
    version_created, wait_for,
)

DCGAN = {"dcgan.pt2": FIXTURES / "generators" / "dcgan.pt2"}
AUDIT_TIMEOUT = 300  # seconds for one audit on a loaded 2-core machine
pytestmark = pytest.mark.slow


@pytest.fixture
def receivers(tmp_path):
    started: list[Receiver] = []

    def start(server, *extra, name="receiver", queue=None) -> Receiver:
        receiver = Receiver(tmp_path / name, server, *extra, queue=queue)
        started.append(receiver)
        receiver.start()
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def _job(receiver: Receiver, model: str, version: str) -> dict | None:
    with sqlite3.connect(receiver.queue) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE model = ? AND version = ?", (model, version)).fetchone()
    return dict(row) if row else None


def _done(receiver: Receiver, model: str, version: str):
    job = _job(receiver, model, version)
    return job if job and job["state"] in ("done", "failed") else None


def test_mlflow_delivers_and_the_receiver_gates(mlflow_server, receivers):
    client, model = mlflow_server.client(), unique("hooked")
    receiver = receivers(mlflow_server, "--model", model)
    hook = client.create_webhook(unique("ganaudit"), f"{receiver.url}/webhook",
                                 ["model_version.created", "model_version_alias.created"], secret=SECRET)
    try:
        time.sleep(1.5)  # the server caches its webhook list for MLFLOW_WEBHOOK_CACHE_TTL (1 s here)
        version = register(client, model, DCGAN)
        job = wait_for(lambda: _done(receiver, model, version), AUDIT_TIMEOUT, "the audit of the delivered version")
        assert job["state"] == "done" and job["outcome"] == "pass" and job["source"] == "model_version.created"
        assert client.get_model_version(model, version).tags["ganaudit.verdict"] == "pass"
        assert client.get_model_version_by_alias(model, "audited").version == version
        # The gate's own alias comes back as an event too: recorded, not gated again.
        wait_for(lambda: _deliveries(receiver) >= 2, 60, "the alias event's delivery")
        assert _job(receiver, model, version)["attempts"] == 1
        # An alias set by a person is gated; the same key means no second run.
        client.set_registered_model_alias(model, "staging", version)
        wait_for(lambda: _deliveries(receiver) >= 3, 60, "the staging alias delivery")
        wait_for(lambda: _done(receiver, model, version), AUDIT_TIMEOUT, "the staging alias job")
        assert len(audit_runs(client, model, version)) == 1
    finally:
        client.delete_webhook(hook.webhook_id)


def _deliveries(receiver: Receiver) -> int:
    with sqlite3.connect(receiver.queue) as db:
        return db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]


def test_duplicate_bad_and_replayed_deliveries(mlflow_server, receivers):
    client, model = mlflow_server.client(), unique("dup")
    version = register(client, model, DCGAN)
    receiver = receivers(mlflow_server)
    body = version_created(model, version)
    headers = signed_headers(body, "delivery-1")
    assert receiver.post(body, headers) == (202, {"status": "queued"})
    assert receiver.post(body, headers) == (200, {"status": "duplicate delivery"})  # MLflow retrying the same delivery
    assert receiver.post(body, signed_headers(body, "delivery-2"))[1]["status"] in ("already queued", "queued")
    for bad in (signed_headers(body, secret="wrong secret"), {k: v for k, v in headers.items() if "Signature" not in k},
                signed_headers(body, "delivery-3", stamp=int(time.time()) - 3600)):  # a captured old delivery, replayed
        status, answer = receiver.post(body, bad)
        assert status == 401, answer
    assert receiver.post(body.replace(b'"created"', b'"deleted"'), headers)[0] == 401  # signed body was changed
    wait_for(lambda: _done(receiver, model, version), AUDIT_TIMEOUT, "the audit")
    assert _job(receiver, model, version)["outcome"] == "pass"
    assert len(audit_runs(client, model, version)) == 1
    assert _deliveries(receiver) == 2


def test_receiver_killed_mid_audit_resumes_it_once(mlflow_server, receivers):
    client, model = mlflow_server.client(), unique("killed")
    version = register(client, model, DCGAN)
    receiver = receivers(mlflow_server, "--num-samples", "600", name="first")
    body = version_created(model, version)
    assert receiver.post(body, signed_headers(body))[0] == 202
    wait_for(lambda: receiver.jobs()["running"] == 1, 60, "the audit to start")
    time.sleep(1.0)  # into the audit: loading, sampling, embedding take several seconds
    receiver.stop(signal.SIGKILL)
    assert _job(receiver, model, version)["state"] == "running"
    assert audit_runs(client, model, version, finished=False) == []  # killed before anything was logged

    again = receivers(mlflow_server, "--num-samples", "600", name="second", queue=receiver.queue)
    job = wait_for(lambda: _done(again, model, version), AUDIT_TIMEOUT, "the resumed audit")
    assert (job["state"], job["outcome"], job["attempts"]) == ("done", "pass", 2)
    assert len(audit_runs(client, model, version, finished=False)) == 1
    assert "resuming 1 audit(s)" in again.log.read_text()


def test_registry_down_is_retried_with_backoff_then_gated(tmp_path, receivers):
    server = MlflowServer(tmp_path / "registry")
    server.start()
    try:
        client, model = server.client(), unique("outage")
        version = register(client, model, DCGAN)
        receiver = receivers(server, "--retry-max", "2")
        server.stop()
        body = version_created(model, version)
        assert receiver.post(body, signed_headers(body))[0] == 202  # the receiver answers while the registry is down
        wait_for(lambda: (_job(receiver, model, version) or {}).get("failures", 0) >= 2, 120, "two failed attempts")
        assert _job(receiver, model, version)["state"] in ("queued", "running")
        assert "MLflow registry unreachable" in receiver.log.read_text()
        server.start()
        job = wait_for(lambda: _done(receiver, model, version), AUDIT_TIMEOUT, "the audit after the registry is back")
        assert (job["state"], job["outcome"], job["failures"]) == ("done", "pass", 0)
        assert server.client().get_model_version(model, version).tags["ganaudit.verdict"] == "pass"
    finally:
        server.stop()


def test_reconcile_gates_versions_no_webhook_announced(mlflow_server, receivers):
    client, model = mlflow_server.client(), unique("missed")
    version = register(client, model, DCGAN)  # no webhook: the event never reaches the receiver
    receiver = receivers(mlflow_server, "--reconcile-every", "1", "--model", model)
    job = wait_for(lambda: _done(receiver, model, version), AUDIT_TIMEOUT, "the reconciled audit")
    assert (job["source"], job["outcome"]) == ("reconcile", "pass")
    time.sleep(2.5)  # two more reconcile passes: the version has a verdict now, so nothing is queued again
    assert _job(receiver, model, version)["attempts"] == 1
