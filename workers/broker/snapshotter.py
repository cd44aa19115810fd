"""Store a snapshot of an account's state while its owner runs: `python -m
workers.broker.snapshotter`, started by the owner (`AccountOwner._maybe_snapshot`).

It reads one JSON job on stdin (`journal`, `account`, `epoch`, `retain_finished`, `limits`),
rebuilds the books and the position manager from the newest snapshot and the journal entries
after it, exactly as a new owner would (`workers.broker.snapshots`), and stores the result as
of the last entry it read. It never writes to the journal and never takes its write lock; the
owner goes on appending meanwhile. It runs at a lower priority, on the other core when there
is one, and prints one JSON line: `seq`, whether it `stored` it, and what it cost.

It dies with the Broker that started it. Exit status: 0 done (or nothing new to store), 3 the
epoch no longer owns the journal, 1 any other failure (the owner logs it and tries again
later; nothing is lost either way).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from protocol.risk import RiskLimits
from tradefleet.service import logs
from workers.broker.journal import JournalReader
from workers.broker.snapshots import (
    SnapshotFenced,
    rebuild_books,
    snapshot_config,
    snapshot_path,
    state_of,
    stored_seq,
    write_snapshot,
)

EXIT_FENCED = 3
PR_SET_PDEATHSIG = 1  # prctl(2)


def store(job: dict[str, Any]) -> dict[str, Any]:
    """Carry out one job; the result line's fields."""
    started = time.monotonic()
    journal_path = Path(job["journal"])
    account, epoch = str(job["account"]), int(job["epoch"])
    limits = RiskLimits.model_validate(job["limits"])
    retain = int(job["retain_finished"])
    config = snapshot_config(retain, limits)
    target = snapshot_path(journal_path)
    log = structlog.get_logger("snapshotter").bind(account=account, epoch=epoch)
    reader = JournalReader(journal_path)
    try:
        if reader.owner_epoch() != epoch:
            raise SnapshotFenced(f"{journal_path.name}: epoch {epoch} no longer owns it")
        rebuilt = rebuild_books(account, time.time_ns, reader, target, config, log)
        seq, stored_already = rebuilt.last_seq, stored_seq(target)
        if seq <= stored_already:
            return {"seq": stored_already, "stored": False}
        manager = rebuilt.position_manager(account, limits, {}, retain)
        stored = write_snapshot(target, seq, epoch, state_of(config, rebuilt.book, manager),
                                lambda: reader.owner_epoch() == epoch)
        return {"seq": seq, "stored": stored, "from_seq": rebuilt.snapshot_seq,
                "replayed": len(rebuilt.journaled), "errors": len(rebuilt.errors),
                "ms": round((time.monotonic() - started) * 1000, 1)}
    finally:
        reader.close()


def die_with_parent() -> None:
    """On Linux, be killed when the Broker that started this process dies (kill -9 included):
    a snapshot for an owner that is gone is of no use to anyone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main() -> int:
    logs.configure("INFO", kind="snapshotter")  # to stderr, the owner worker's log
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # it died before the line above took effect
        return 1
    with contextlib.suppress(OSError):
        os.nice(10)  # the owner's own work comes first
    try:
        result = store(orjson.loads(sys.stdin.buffer.read()))
    except SnapshotFenced as exc:
        print(orjson.dumps({"error": str(exc)}).decode(), flush=True)
        return EXIT_FENCED
    except Exception as exc:  # noqa: BLE001 - reported to the owner, which carries on
        print(orjson.dumps({"error": repr(exc)}).decode(), flush=True)
        return 1
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
