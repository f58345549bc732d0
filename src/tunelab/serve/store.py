"""The service's durable state: one SQLite database in WAL mode (files' metadata, jobs, their events and
checkpoints, fine-tuned models) under the data directory, and the uploaded bytes beside it.

Every row carries its `owner` (a hash of the API key that made it, never the key) and every read filters on
it, so one key never sees another's objects. Ids are random and never used as paths: a file's bytes live
under a separate random name recorded in its row. Each write is one transaction, committed before the
answer goes out, so a server killed at any moment loses nothing it has acknowledged.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
  created_at INTEGER NOT NULL, expires_at INTEGER, status TEXT NOT NULL, blob TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL,
  workdir TEXT NOT NULL, spec TEXT NOT NULL, requested TEXT, pid INTEGER, process_start TEXT,
  events_offset INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
  created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
  id TEXT PRIMARY KEY, job_id TEXT NOT NULL, owner TEXT NOT NULL, created_at INTEGER NOT NULL,
  step_number INTEGER NOT NULL, metrics TEXT NOT NULL, model TEXT NOT NULL, path TEXT NOT NULL,
  UNIQUE (job_id, step_number));
CREATE TABLE IF NOT EXISTS models (
  id TEXT NOT NULL, owner TEXT NOT NULL, created_at INTEGER NOT NULL, job_id TEXT NOT NULL, base TEXT NOT NULL,
  org TEXT NOT NULL, PRIMARY KEY (owner, id));
"""


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}-{secrets.token_hex(nbytes)}"


def now() -> int:
    return int(time.time())


class Store:
    """The database, shared by the request threads and the worker (one connection behind one lock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        """Several statements as one transaction: all of them, or none after a crash."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self.db.execute(sql, args)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute(sql, args).fetchone()
        return dict(row) if row is not None else None

    def all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self.db.execute(sql, args).fetchall()]

    # files
    def add_file(self, record: dict[str, Any]) -> None:
        keys = ("id", "owner", "filename", "purpose", "bytes", "created_at", "expires_at", "status", "blob")
        self.write([(f"INSERT INTO files ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                     tuple(record[k] for k in keys))])

    def file(self, owner: str, file_id: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner))

    def delete_file(self, owner: str, file_id: str) -> None:
        self.write([("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner))])

    def expired_files(self, at: int) -> list[dict[str, Any]]:
        return self.all("SELECT * FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (at,))

    # jobs: the OpenAI object lives in `body` (JSON); the columns are what the worker queries on
    def add_job(self, owner: str, body: dict[str, Any], workdir: str, spec: dict[str, Any],
                events: list[dict[str, Any]]) -> None:
        self.write([("INSERT INTO jobs (id, owner, created_at, status, body, workdir, spec) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (body["id"], owner, body["created_at"], body["status"], json.dumps(body), workdir,
                      json.dumps(spec))), *self.event_statements(body["id"], events)])

    def job(self, job_id: str, owner: str | None = None) -> dict[str, Any] | None:
        row = self.one("SELECT * FROM jobs WHERE id = ?" + (" AND owner = ?" if owner is not None else ""),
                       (job_id,) if owner is None else (job_id, owner))
        return _job(row) if row else None

    def jobs_in(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(statuses))
        return [_job(r) for r in self.all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid", statuses)]

    def update_job(self, job_id: str, body_changes: dict[str, Any] | None = None, *,
                   extra: list[tuple[str, tuple[Any, ...]]] = (), **columns: Any) -> dict[str, Any]:
        """Change a job's object and columns (and run `extra` statements) in one transaction; the job after it."""
        with self.lock:
            row = self.job(job_id)
            body = {**row["body"], **(body_changes or {})}
            if "status" in (body_changes or {}):
                columns["status"] = body["status"]
            sets = ", ".join(f"{k} = ?" for k in ("body", *columns))
            self.write([(f"UPDATE jobs SET {sets} WHERE id = ?", (json.dumps(body), *columns.values(), job_id)),
                        *extra])
            return self.job(job_id)

    # events
    def event_statements(self, job_id: str, events: list[dict[str, Any]]) -> list[tuple[str, tuple[Any, ...]]]:
        return [("INSERT INTO events (id, job_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (new_id("ftevent"), job_id, int(e.get("created_at") or now()), e["level"], e["message"],
                  e.get("type", "message"), json.dumps(e["data"]) if e.get("data") is not None else None))
                for e in events]

    def add_events(self, job_id: str, events: list[dict[str, Any]]) -> None:
        self.write(self.event_statements(job_id, events))

    def events(self, job_id: str, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; `after` is the id of the last event of the previous page."""
        start = self.one("SELECT seq FROM events WHERE id = ? AND job_id = ?", (after, job_id)) if after else None
        bound = start["seq"] if start else None
        return self.all("SELECT * FROM events WHERE job_id = ?" + (" AND seq < ?" if bound else "") +
                        " ORDER BY seq DESC LIMIT ?", (job_id, bound, limit) if bound else (job_id, limit))

    # checkpoints and models
    def checkpoint_statement(self, record: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        keys = ("id", "job_id", "owner", "created_at", "step_number", "metrics", "model", "path")
        return (f"INSERT OR IGNORE INTO checkpoints ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                tuple(json.dumps(record[k]) if k == "metrics" else record[k] for k in keys))

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.all("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step_number DESC", (job_id,))
        return [{**r, "metrics": json.loads(r["metrics"])} for r in rows]

    def checkpoint_by_model(self, owner: str, name: str) -> dict[str, Any] | None:
        row = self.one("SELECT * FROM checkpoints WHERE owner = ? AND model = ?", (owner, name))
        return {**row, "metrics": json.loads(row["metrics"])} if row else None

    def model_statement(self, record: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        keys = ("id", "owner", "created_at", "job_id", "base", "org")
        return (f"INSERT OR IGNORE INTO models ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                tuple(record[k] for k in keys))

    def model(self, owner: str, name: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM models WHERE owner = ? AND id = ?", (owner, name))

    def models(self, owner: str) -> list[dict[str, Any]]:
        return self.all("SELECT * FROM models WHERE owner = ? ORDER BY created_at, rowid", (owner,))


def _job(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "body": json.loads(row["body"]), "spec": json.loads(row["spec"])}


def page(rows: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The first `limit` rows of rows fetched with limit + 1, and whether there were more."""
    return rows[:limit], len(rows) > limit
