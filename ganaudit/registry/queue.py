"""The receiver's persistent queue: one row per (model, version), in an sqlite file.

States: ``queued`` (waiting, possibly until ``not_before``), ``running`` (being gated),
``done`` (a verdict was recorded: ``outcome`` is pass, fail or error) and ``failed`` (the gate
could not run: a bad policy or an internal error; not retried until a new event). A job left
``running`` by a killed receiver is queued again at start (``recover``); the gate's own key
makes the second attempt reuse whatever the first one finished, so no audit is logged twice.
Deliveries are recorded by id in the same transaction as their job: a redelivery is a no-op.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ganaudit.errors import GanauditError

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    model TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
    outcome TEXT, run_id TEXT, reason TEXT, source TEXT, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS deliveries (delivery_id TEXT PRIMARY KEY, received REAL NOT NULL);
"""


@dataclass(frozen=True)
class Job:
    """One row of the queue. ``failures``: consecutive attempts that found the registry down."""

    model: str
    version: str
    state: str
    attempts: int
    failures: int
    outcome: str | None
    run_id: str | None
    reason: str | None


class JobQueue:
    """The queue in ``path``; safe to use from the receiver's threads."""

    def __init__(self, path: Path):
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise GanauditError(f"--queue {path}: cannot open it as an sqlite queue: {e}") from None
        self._lock = threading.Lock()

    @contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def accept(self, delivery_id: str | None, item: tuple[str, str] | None, source: str) -> str:
        """Record a delivery and queue its version, atomically.

        Returns:
            ``"duplicate delivery"`` (this id was seen), ``"ignored"`` (no version to gate),
            ``"already queued"`` (a job for the version is waiting or running), or ``"queued"``.
        """
        now = time.time()
        with self._transaction() as db:
            if delivery_id is not None:
                if db.execute("SELECT 1 FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone():
                    return "duplicate delivery"
                db.execute("INSERT INTO deliveries VALUES (?, ?)", (delivery_id, now))
            return "ignored" if item is None else _enqueue(db, item, source, now)

    def enqueue(self, model: str, version: str, source: str) -> str:
        """Queue a version found without a delivery (reconcile). Same answers as ``accept``."""
        return self.accept(None, (model, str(version)), source)

    def claim(self) -> Job | None:
        """Take the oldest job that may run now and mark it running."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT model, version FROM jobs WHERE state = ? AND not_before <= ? "
                             "ORDER BY created LIMIT 1", (QUEUED, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = ?, attempts = attempts + 1, updated = ? WHERE model = ? AND version = ?",
                       (RUNNING, now, *row))
        return self.get(*row)

    def finish(self, job: Job, outcome: str, run_id: str | None, reason: str = "") -> None:
        self._update(job, state=DONE, outcome=outcome, run_id=run_id, reason=reason, failures=0)

    def fail(self, job: Job, reason: str) -> None:
        self._update(job, state=FAILED, reason=reason)

    def retry_later(self, job: Job, delay: float, reason: str) -> None:
        self._update(job, state=QUEUED, reason=reason, failures=job.failures + 1, not_before=time.time() + delay)

    def recover(self) -> int:
        """Queue again the jobs a killed receiver left running; returns how many."""
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET state = ?, not_before = 0 WHERE state = ?", (QUEUED, RUNNING)).rowcount

    def get(self, model: str, version: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT model, version, state, attempts, failures, outcome, run_id, reason FROM jobs "
                                   "WHERE model = ? AND version = ?", (model, str(version))).fetchone()
        return Job(*row) if row else None

    def jobs(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT model, version, state, attempts, failures, outcome, run_id, reason "
                                    "FROM jobs ORDER BY created").fetchall()
        return [Job(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in (QUEUED, RUNNING, DONE, FAILED)} | dict(rows)

    def prune_deliveries(self, older_than: float) -> None:
        """Forget delivery ids older than ``older_than`` (Unix time): the timestamp window rejects those anyway."""
        with self._transaction() as db:
            db.execute("DELETE FROM deliveries WHERE received < ?", (older_than,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _update(self, job: Job, **values) -> None:
        values["updated"] = time.time()
        columns = ", ".join(f"{k} = ?" for k in values)
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {columns} WHERE model = ? AND version = ?",
                       (*values.values(), job.model, job.version))


def _enqueue(db, item: tuple[str, str], source: str, now: float) -> str:
    model, version = item
    row = db.execute("SELECT state FROM jobs WHERE model = ? AND version = ?", (model, version)).fetchone()
    if row is not None and row[0] in (QUEUED, RUNNING):
        return "already queued"
    if row is None:
        db.execute("INSERT INTO jobs (model, version, state, source, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
                   (model, version, QUEUED, source, now, now))
    else:  # gated before: the gate's key decides whether anything is audited again
        db.execute("UPDATE jobs SET state = ?, not_before = 0, failures = 0, source = ?, created = ?, updated = ? "
                   "WHERE model = ? AND version = ?", (QUEUED, source, now, now, model, version))
    return "queued"
