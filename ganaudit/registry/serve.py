"""``ganaudit mlflow serve``: MLflow webhooks in, one audit at a time out.

Three threads: the HTTP receiver (``POST /webhook``, ``GET /health``) verifies a delivery,
records it with its job in the sqlite queue and answers 202 at once (MLflow waits at most
30 s); one worker gates queued versions one at a time; with ``--reconcile-every`` a third
polls the registry for versions without a verdict. A registry that is down is retried with
exponential backoff (2 s doubling to ``--retry-max``). SIGTERM or SIGINT stops the receiver
at once; an audit cut short is resumed at the next start.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ganaudit.errors import GanauditError
from ganaudit.registry.client import ModelRef, RegistryUnavailable, make_client
from ganaudit.registry.mlflow_gate import GateOptions, gate_version
from ganaudit.registry.queue import JobQueue
from ganaudit.registry.reconcile import reconcile_once
from ganaudit.registry.webhooks import PayloadError, SignatureError, verify_delivery, version_of

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # MLflow's events are a few hundred bytes
RETRY_BASE = 2.0


@dataclass(frozen=True)
class ServeOptions:
    """The receiver's settings; ``gate`` is what each audit uses (as ``ganaudit mlflow gate``)."""

    gate: GateOptions
    queue: Path
    secret: str
    host: str = "127.0.0.1"
    port: int = 8765
    tolerance: float = 300.0
    reconcile_every: float | None = None
    models: tuple[str, ...] = ()
    retry_max: float = 300.0
    poll: float = 0.5


def serve_forever(options: ServeOptions, announce=None) -> int:
    """Run the receiver until SIGTERM or SIGINT; returns the exit code (0)."""
    queue = JobQueue(options.queue)
    resumed = queue.recover()
    if resumed:
        log.warning("resuming %d audit(s) interrupted by the last stop", resumed)
    client = make_client(options.gate.tracking_uri)
    gate = replace(options.gate, force=False, out_dir=None, artifact=None)
    stop = threading.Event()
    try:
        server = ThreadingHTTPServer((options.host, options.port), _handler(options, queue))
    except OSError as e:
        raise GanauditError(f"cannot listen on {options.host}:{options.port}: {e.strerror}") from None
    threads = [threading.Thread(target=work_loop, args=(client, queue, gate, options, stop), daemon=True,
                                name="ganaudit-worker")]
    if options.reconcile_every:
        threads.append(threading.Thread(target=reconcile_loop, args=(client, queue, options, stop), daemon=True,
                                        name="ganaudit-reconcile"))
    for t in threads:
        t.start()
    _on_signals(lambda: (stop.set(), threading.Thread(target=server.shutdown, daemon=True).start()))
    if announce is not None:
        announce(f"ganaudit mlflow serve: listening on http://{options.host}:{server.server_address[1]}/webhook "
                 f"(health /health, queue {options.queue})")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()
    log.info("stopped; %d job(s) queued, %d running (resumed at the next start)",
             queue.counts()["queued"], queue.counts()["running"])
    return 0


def work_loop(client, queue: JobQueue, gate: GateOptions, options: ServeOptions, stop: threading.Event) -> None:
    """Gate queued versions one at a time until ``stop`` is set."""
    while not stop.is_set():
        job = queue.claim()
        if job is None:
            stop.wait(options.poll)
            continue
        run_job(client, queue, job, gate, options.retry_max)


def run_job(client, queue: JobQueue, job, gate: GateOptions, retry_max: float) -> None:
    """Gate one job and record what came of it; never raises."""
    log.info("gating %s v%s (attempt %d)", job.model, job.version, job.attempts)
    try:
        outcome = gate_version(client, ModelRef(job.model, job.version), gate)
    except RegistryUnavailable as e:
        delay = min(retry_max, RETRY_BASE * 2 ** job.failures)
        log.warning("%s; retrying %s v%s in %.0f s", e, job.model, job.version, delay)
        queue.retry_later(job, delay, str(e))
    except GanauditError as e:
        log.error("%s v%s cannot be gated with this policy: %s", job.model, job.version, e)
        queue.fail(job, str(e))
    except Exception as e:  # a bug must not stop the receiver, nor read as a verdict
        log.exception("internal error gating %s v%s", job.model, job.version)
        queue.fail(job, f"internal error: {type(e).__name__}: {e}")
    else:
        log.info("%s v%s: %s%s", job.model, job.version, outcome.verdict, " (already gated)" if outcome.skipped else "")
        queue.finish(job, outcome.verdict, outcome.run_id, outcome.reason)


def reconcile_loop(client, queue: JobQueue, options: ServeOptions, stop: threading.Event) -> None:
    """Every ``reconcile_every`` seconds, queue versions that have no verdict; a down registry waits a turn."""
    while not stop.is_set():
        try:
            reconcile_once(client, queue, options.models)
            queue.prune_deliveries(time.time() - 2 * options.tolerance)
        except RegistryUnavailable as e:
            log.warning("reconcile skipped: %s", e)
        except Exception:
            log.exception("reconcile failed")
        stop.wait(options.reconcile_every)


def _handler(options: ServeOptions, queue: JobQueue):
    class Handler(BaseHTTPRequestHandler):
        server_version = "ganaudit"

        def do_GET(self):
            if self.path.rstrip("/") != "/health":
                return self._reply(404, {"error": "not found; POST /webhook, GET /health"})
            self._reply(200, {"status": "ok", "jobs": queue.counts()})

        def do_POST(self):
            if self.path.rstrip("/") not in ("", "/webhook"):
                return self._reply(404, {"error": "not found; POST /webhook"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._reply(413, {"error": "body too large"})
            body = self.rfile.read(length)
            try:
                delivery = verify_delivery(options.secret, self.headers, body, time.time(), options.tolerance)
                item = version_of(delivery, options.gate.alias)
            except SignatureError as e:
                log.warning("rejected a delivery from %s: %s", self.client_address[0], e)
                return self._reply(401, {"error": str(e)})
            except PayloadError as e:
                return self._reply(400, {"error": str(e)})
            if item is not None and options.models and item[0] not in options.models:
                item = None
            status = queue.accept(delivery.delivery_id, item, delivery.event)
            log.info("delivery %s (%s): %s", delivery.delivery_id, delivery.event, status)
            self._reply(202 if status in ("queued", "already queued") else 200, {"status": status})

        def _reply(self, code: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # http.server prints to stderr; use logging
            log.debug("%s %s", self.client_address[0], format % args)

    return Handler


def _on_signals(callback) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: callback())
