"""The manager's persisted registry (SQLite, WAL): workers, epochs, desired count, requests,
and small settings documents (e.g. the BrokerManager's fleet-wide kill switch).

Writes are small and rare (lifecycle changes only), so a synchronous connection is used directly
from the event loop; every write is committed before the caller reports it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    state TEXT NOT NULL,
    doc TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spawn_requests (
    request_id TEXT PRIMARY KEY,
    worker_ids TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass
class StoredWorker:
    """A worker's durable facts. `doc` holds tokens hashes, url, spawner state and the like."""

    id: str
    kind: str
    epoch: int
    state: str
    doc: dict[str, Any] = field(default_factory=dict)


class Registry:
    """SQLite-backed registry of one manager. Not shared between managers."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- meta

    def get_meta(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else default

    def set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) "
                         "DO UPDATE SET value=excluded.value", (key, str(value)))

    def bump(self, key: str) -> int:
        """Atomically increment counter `key` and return the new value."""
        with self._transaction():
            value = self.get_meta(key, 0) + 1
            self.set_meta(key, value)
        return value

    # -- settings documents

    def get_doc(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT doc FROM settings WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        doc = orjson.loads(row[0])
        return doc if isinstance(doc, dict) else None

    def set_doc(self, key: str, doc: dict[str, Any]) -> None:
        """Store `doc` under `key` (committed before returning)."""
        self._db.execute("INSERT INTO settings(key, doc) VALUES(?, ?) ON CONFLICT(key) "
                         "DO UPDATE SET doc=excluded.doc", (key, orjson.dumps(doc).decode()))

    # -- workers

    def save_worker(self, worker: StoredWorker, now: float) -> None:
        self._db.execute(
            "INSERT INTO workers(id, kind, epoch, state, doc, updated_at) VALUES(?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET state=excluded.state, doc=excluded.doc, "
            "updated_at=excluded.updated_at",
            (worker.id, worker.kind, worker.epoch, worker.state,
             orjson.dumps(worker.doc).decode(), now))

    def load_workers(self, states: frozenset[str] | None = None) -> list[StoredWorker]:
        rows = self._db.execute("SELECT id, kind, epoch, state, doc FROM workers ORDER BY epoch")
        workers = [StoredWorker(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]
        return [w for w in workers if states is None or w.state in states]

    def forget_finished(self, keep: int, requests_before: float) -> None:
        """Drop the oldest finished workers beyond `keep` (history is also in the logs), and
        the spawn requests made before `requests_before` (a repeat of one spawns again)."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM workers WHERE state IN ('failed','stopped') AND id NOT IN "
                "(SELECT id FROM workers WHERE state IN ('failed','stopped') "
                "ORDER BY epoch DESC LIMIT ?)", (keep,))
            self._db.execute("DELETE FROM spawn_requests WHERE created_at < ?",
                             (requests_before,))

    # -- idempotent spawn requests

    def spawn_request(self, request_id: str) -> list[str] | None:
        row = self._db.execute("SELECT worker_ids FROM spawn_requests WHERE request_id=?",
                               (request_id,)).fetchone()
        return list(orjson.loads(row[0])) if row else None

    def record_spawn_request(self, request_id: str, worker_ids: list[str], now: float) -> None:
        self._db.execute("INSERT OR IGNORE INTO spawn_requests VALUES(?,?,?)",
                         (request_id, orjson.dumps(worker_ids).decode(), now))

    def _transaction(self) -> Any:
        db = self._db

        class _Tx:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()
