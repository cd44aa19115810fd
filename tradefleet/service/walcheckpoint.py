"""Checkpoints of a SQLite WAL file in a thread of their own, beside a single writer.

A writer that leaves checkpoints to SQLite (`wal_autocheckpoint`) pays for one, fsync
included, inside whichever write crosses the threshold: a few ms now and then on the hot path.
`Checkpointer.take_over(db, path)` turns that off on the writer's connection and starts the
thread instead.

About once a period the thread copies the WAL into the database file without blocking the
writer (PASSIVE). A passive checkpoint copies what the WAL held when it began, and the WAL is
rewound only when a write finds all of it copied; under a steady stream of writes (every 2 ms
is enough) that never happens and the WAL grows without end. So once the file is past
`wal_limit` a RESTART checkpoint follows: it holds writes back while it copies the little the
passive one left and syncs (1-3 ms), and the next write starts the WAL over.

A RESTART also has to wait until no reader is using the WAL, and it waits holding writes back.
A reader that takes its time (the snapshot side process reads 20,000 entries in one query)
would so stall every write for as long as the checkpoint's busy handler let it wait (appends
of up to 185 ms in `bench.bench_journal`). The thread therefore has no busy handler at all: a
RESTART that finds a write in progress or a reader in its way gives up at once, and is tried
again `RESTART_RETRY_S` later, up to `RESTART_TRIES` times a round; meanwhile the WAL grows a
little past its limit.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

CHECKPOINT_EVERY_S = 1.0
WAL_SIZE_LIMIT = 16 * 1024 * 1024
RESTART_TRIES = 5
RESTART_RETRY_S = 0.01


class Checkpointer:
    """Checkpoints the WAL of the database at `path` every `every_s` until `stop()`."""

    def __init__(self, path: Path, *, every_s: float = CHECKPOINT_EVERY_S,
                 wal_limit: int = WAL_SIZE_LIMIT) -> None:
        self.path = path
        self.every_s = every_s
        self.wal_limit = wal_limit
        self.rewinds = 0  # RESTART checkpoints that went through
        self.deferred = 0  # RESTART attempts that gave way to a write or a reader
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"wal-checkpoint:{path.name}")
        self._thread.start()

    @classmethod
    def take_over(cls, db: sqlite3.Connection, path: Path, *,
                  every_s: float = CHECKPOINT_EVERY_S,
                  wal_limit: int = WAL_SIZE_LIMIT) -> Checkpointer:
        """Stop the writer `db` (a connection to `path` in WAL mode) from checkpointing in its
        own writes, let it cut the WAL back to `wal_limit` after a burst, and checkpoint in a
        thread instead."""
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={int(wal_limit)}")
        return cls(path, every_s=every_s, wal_limit=wal_limit)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        try:
            db = self.connect(self.path)
        except sqlite3.Error:
            return
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            while not self._stop.wait(self.every_s):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal.stat().st_size > self.wal_limit:
                        self.rewind(db)
                except (sqlite3.Error, OSError):
                    continue  # busy or gone: the next round tries again
        finally:
            db.close()

    @staticmethod
    def connect(path: Path) -> sqlite3.Connection:
        """The thread's connection: timeout=0, no busy handler, so that a RESTART never waits
        holding writes back."""
        return sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)

    def rewind(self, db: sqlite3.Connection) -> bool:
        """Try a RESTART checkpoint on `db` (the thread's connection, `connect`) up to
        `RESTART_TRIES` times; True once one went through, so the next write rewinds the WAL."""
        for _ in range(RESTART_TRIES):
            busy = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
            if not busy:
                self.rewinds += 1
                return True
            self.deferred += 1
            if self._stop.wait(RESTART_RETRY_S):
                break
        return False
