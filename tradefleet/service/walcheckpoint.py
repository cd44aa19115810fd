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
passive one left and syncs (one write in a few thousand then waits a few ms), and the next
write starts the WAL over.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

CHECKPOINT_EVERY_S = 1.0
WAL_SIZE_LIMIT = 16 * 1024 * 1024


class Checkpointer:
    """Checkpoints the WAL of the database at `path` every `every_s` until `stop()`."""

    def __init__(self, path: Path, *, every_s: float = CHECKPOINT_EVERY_S,
                 wal_limit: int = WAL_SIZE_LIMIT) -> None:
        self.path = path
        self.every_s = every_s
        self.wal_limit = wal_limit
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
            db = sqlite3.connect(self.path, isolation_level=None, timeout=1,
                                 check_same_thread=False)
        except sqlite3.Error:
            return
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            while not self._stop.wait(self.every_s):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal.stat().st_size > self.wal_limit:
                        db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                except (sqlite3.Error, OSError):
                    continue  # busy or gone: the next round tries again
        finally:
            db.close()
