"""A real MLflow server and a real `ganaudit mlflow serve` for the registry tests, both bounded.

Each process is started in its own session and stopped by its process group (SIGTERM, then
SIGKILL), so nothing it forked outlives the test.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO

pytest.importorskip("mlflow")

SECRET = "registry-test-secret"
BIN = Path(sys.executable).parent
AUDIT_ARGS = ["--train", str(FIXTURES / "data" / "train"), "--holdout", str(FIXTURES / "data" / "holdout"),
              "--num-samples", "200"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_json(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class _Process:
    def __init__(self, args: list[str], env: dict, log: Path, cwd: Path = REPO):
        self.args, self.env, self.log, self.cwd = args, env, log, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Signal the process group; SIGKILL it when it has not exited within ``timeout``."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        try:  # children left in the group (MLflow's uvicorn worker)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


class MlflowServer(_Process):
    """``mlflow server`` on 127.0.0.1 with an sqlite backend and artifacts under ``root``."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        from cryptography.fernet import Fernet

        env = dict(os.environ, MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https", MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
                   MLFLOW_WEBHOOK_CACHE_TTL="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
                   MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode())
        super().__init__([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                          "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                          "--port", str(self.port), "--workers", "1"], env, root / "server.log")

    def start(self) -> None:
        super().start()
        try:
            wait_for(lambda: _up(f"{self.url}/health") or self.proc.poll() is not None, 120, "mlflow server")
        finally:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited: {self.log.read_text()[-2000:]}")

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)


class Receiver(_Process):
    """``ganaudit mlflow serve`` on a free port, auditing against ``server`` with the small-run settings."""

    def __init__(self, root: Path, server: MlflowServer, *extra: str, queue: Path | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.queue = queue or root / "queue.sqlite"
        env = dict(os.environ, GANAUDIT_WEBHOOK_SECRET=SECRET, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        super().__init__([str(BIN / "ganaudit"), "mlflow", "serve", "--port", str(self.port), "--queue", str(self.queue),
                          "--tracking-uri", server.url, "--cache-dir", str(root / "cache"), *AUDIT_ARGS, *extra],
                         env, root / "receiver.log")

    def start(self) -> None:
        super().start()
        wait_for(lambda: _up(f"{self.url}/health") or self.proc.poll() is not None, 60, "the receiver")
        assert self.proc.poll() is None, self.log.read_text()[-2000:]

    def jobs(self) -> dict:
        return http_json(f"{self.url}/health")[1]["jobs"]

    def post(self, body: bytes, headers: dict) -> tuple[int, dict]:
        return http_json(f"{self.url}/webhook", body, {"Content-Type": "application/json", **headers})


def version_created(name: str, version: str) -> bytes:
    """A ``model_version.created`` body shaped as MLflow sends it."""
    return json.dumps({"entity": "model_version", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": name, "version": str(version), "source": "s", "run_id": None, "tags": {},
                                "description": None}}).encode()


def signed_headers(body: bytes, delivery_id: str | None = None, stamp: int | None = None, secret: str = SECRET) -> dict:
    from ganaudit.registry.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    delivery_id = delivery_id or str(uuid.uuid4())
    stamp_text = str(int(time.time()) if stamp is None else stamp)
    return {DELIVERY_HEADER: delivery_id, TIMESTAMP_HEADER: stamp_text,
            SIGNATURE_HEADER: sign(secret, delivery_id, stamp_text, body)}


def register(client, model: str, files: dict[str, Path | bytes | str]) -> str:
    """Log ``files`` (artifact path -> file, bytes or text) in a training run and register them as a new version."""
    experiments = client.get_experiment_by_name("training")
    experiment_id = experiments.experiment_id if experiments else client.create_experiment("training")
    run = client.create_run(experiment_id)
    with tempfile.TemporaryDirectory() as staging:
        for relative, content in files.items():
            target = Path(staging) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                target.write_bytes(content.read_bytes())
            else:
                target.write_bytes(content if isinstance(content, bytes) else content.encode())
        client.log_artifacts(run.info.run_id, staging, "generator")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(model)
    except Exception as e:
        if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(model, source=f"{run.info.artifact_uri}/generator", run_id=run.info.run_id)
    return str(version.version)


def audit_runs(client, model: str, version: str | None = None, finished: bool = True) -> list:
    """The ganaudit runs logged for ``model`` (and ``version``)."""
    experiment = client.get_experiment_by_name("ganaudit")
    if experiment is None:
        return []
    query = f"tags.`ganaudit.model_name` = '{model}'"
    if version is not None:
        query += f" and tags.`ganaudit.model_version` = '{version}'"
    runs = client.search_runs([experiment.experiment_id], filter_string=query)
    return [r for r in runs if r.info.status == "FINISHED" or not finished]


_SHARED: dict[str, MlflowServer] = {}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One server for the session. Each test module imports this fixture, which pytest then
    instantiates once per module: they share the first one, and the first teardown stops it."""
    if "server" not in _SHARED:
        _SHARED["server"] = MlflowServer(tmp_path_factory.mktemp("mlflow"))
        _SHARED["server"].start()
    yield _SHARED["server"]
    if "server" in _SHARED:
        _SHARED.pop("server").stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
