"""Snapshots of an account owner's state, so that a new owner replays only what came after.

The journal is the record. A snapshot is derived from it: the books (`AccountBook`) and the
position manager exactly as a replay of the journal up to entry `seq` leaves them, under the
config that shapes that replay (`snapshot_config`: the retention and the configured risk
limits). Which customer each session belongs to is in the journal's own `sessions` table;
snapshots written before that table existed carry the map (`customers`), and a rebuild from
one hands it on, with the customers of the sessions named after it (`Rebuilt.customers`), to
be stored there. A snapshot made under another config or format,
or one that cannot be read, is not used: the whole journal is replayed instead. Losing one
costs time, never data.

`rebuild_books` and `Rebuilt.position_manager` are the one way to rebuild from a journal,
shared by a new owner (`workers.broker.owner`) and by the side process that stores snapshots
while an owner runs (`workers.broker.snapshotter`), so the two cannot drift apart.

The file (`snapshot_path`: next to the journal, `<account>.snapshot`) is one header line
(`seq`, `epoch`, `ts`) and the state, written whole to a temporary file, synced and renamed
over the old one: a reader finds the old snapshot or the new, never a part of one. It is not
in the journal's SQLite file so that the side process never takes the journal's write lock,
which every order's append needs. A writer never replaces a snapshot of a later entry, and
stores nothing once its epoch no longer owns the journal (checked just before the rename; a
snapshot that slipped through would still be correct, being derived from the entries alone).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from protocol.orders import CancelOrder, ModifyOrder, NewOrder
from protocol.risk import RiskLimits
from workers.broker import account as entries
from workers.broker.account import AccountBook
from workers.broker.journal import Entry, JournalReader
from workers.broker.orders import VenueRefused
from workers.broker.risk import manager as risk
from workers.broker.risk.records import RISK_RECORD

RISK = "risk"  # journal kind of the position manager's records
SNAPSHOT_FORMAT = 2  # of the snapshot's state; another format is not used
SNAPSHOT_AFTER_ENTRIES = 20_000
"""An owner stores a snapshot once this many entries have come since the last one: at open,
after replaying them (about 20 us each), and while it runs, through the side process."""


class SnapshotFenced(Exception):
    """The epoch a snapshot was made for no longer owns the journal: nothing was stored."""


def snapshot_path(journal_path: Path) -> Path:
    return journal_path.with_suffix(".snapshot")


def snapshot_config(retain_finished: int, limits: RiskLimits) -> dict[str, Any]:
    """What shapes the rebuilt state besides the entries."""
    return {"format": SNAPSHOT_FORMAT, "retain_finished": retain_finished,
            "limits": limits.model_dump(mode="json")}


def read_snapshot(path: Path) -> tuple[int, dict[str, Any]] | None:
    """The stored snapshot as (seq it covers, state), or None when there is none. Raises on
    a file that cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header, _, body = data.partition(b"\n")
    return int(orjson.loads(header)["seq"]), orjson.loads(body)


def stored_seq(path: Path) -> int:
    """The seq of the stored snapshot (its header only); 0 for none or an unreadable one."""
    try:
        with path.open("rb") as handle:
            return int(orjson.loads(handle.readline())["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def write_snapshot(path: Path, seq: int, epoch: int, state: dict[str, Any],
                   still_owner: Callable[[], bool]) -> bool:
    """Store `state` as of entry `seq` (module docstring). False, and nothing changed, when
    the stored one covers `seq` or later; `SnapshotFenced` when `still_owner()` says no."""
    header = orjson.dumps({"seq": seq, "epoch": epoch, "ts": time.time()})
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(header + b"\n" + orjson.dumps(state))
            handle.flush()
            os.fsync(handle.fileno())
        if stored_seq(path) >= seq:
            return False
        if not still_owner():
            raise SnapshotFenced(f"{path.name}: epoch {epoch} no longer owns the journal")
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


def session_customer(kind: str, payload: dict[str, Any], session_id: str | None
                     ) -> tuple[str, str] | None:
    """The (session, customer) a journal entry names: a request's or a risk record's."""
    customer = payload.get("customer")
    if kind not in (entries.REQUEST, RISK) or not customer:
        return None
    session = payload.get("session_id") or session_id
    record = payload.get("record")
    if session is None and isinstance(record, dict):
        session = record.get("session_id")
    return (session, str(customer)) if isinstance(session, str) else None


def state_of(config: dict[str, Any], book: AccountBook, manager: risk.PositionManager
             ) -> dict[str, Any]:
    """What a snapshot stores."""
    return {"config": config, "book": book.snapshot(), "risk": manager.snapshot()}


@dataclass
class Rebuilt:
    """The books as the journal left them, and what the position manager still needs."""

    book: AccountBook
    customers: dict[str, str]  # sessions named in an old snapshot or after it → customer
    snapshot_seq: int  # the snapshot it started from (0: none)
    journaled: list[Entry]  # the entries replayed after it
    parsed: list[Any]  # each one's tracker input, as the books' replay read it
    base: risk.PositionManager | None  # the snapshot's position manager, if any
    errors: list[str] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.journaled[-1].seq if self.journaled else self.snapshot_seq

    def position_manager(self, account: str, limits: RiskLimits, specs: dict[str, Any],
                         retain_finished: int) -> risk.PositionManager:
        """The snapshot's position manager (or a fresh one) with the journal's risk records,
        order events and venue refusals after it replayed in, in journal order. Decisions are
        not taken in a replay, so `specs` may be empty (they are not in a snapshot)."""
        manager = self.base if self.base is not None else risk.PositionManager(
            account, limits, specs, retain_finished=retain_finished)
        manager.specs = dict(specs)
        for entry, item in zip(self.journaled, self.parsed, strict=True):
            try:
                if entry.kind == RISK:
                    manager.replay(RISK_RECORD.validate_python(entry.payload["record"]))
                elif entry.kind in (entries.EVENT, entries.REFUSED):
                    if isinstance(item, VenueRefused) and item.action == "place":
                        continue  # the tracker journals the rejection that follows
                    if item is not None and not isinstance(item, NewOrder | CancelOrder
                                                           | ModifyOrder):
                        manager.replay(item)
            except Exception as exc:  # noqa: BLE001 - one bad entry must not lose the rest
                self.errors.append(f"risk entry {entry.seq}: {exc!r}")
        self.base = None  # it is the returned manager's now
        return manager


def rebuild_books(account: str, clock: Callable[[], int], journal: JournalReader,
                  snapshot_file: Path, config: dict[str, Any],
                  log: Any) -> Rebuilt:
    """The books from the newest usable snapshot (module docstring) and the entries after it;
    with none, from the whole journal. `config` is `snapshot_config(...)` of the caller."""
    book = AccountBook(account, clock, retain_finished=config["retain_finished"])
    customers: dict[str, str] = {}
    base: risk.PositionManager | None = None
    after = 0
    try:
        found = read_snapshot(snapshot_file)
        if found is not None and found[1].get("config") != config:
            log.info("journal_snapshot_skipped", seq=found[0], reason="config changed")
        elif found is not None:
            seq, state = found
            restored = AccountBook.restore(account, clock, state["book"])
            base = risk.PositionManager.restore(state["risk"], {})
            customers = {str(k): str(v) for k, v in state.get("customers", {}).items()}
            book, after = restored, seq
    except Exception:  # a snapshot only saves time: replay everything
        log.exception("journal_snapshot_unreadable")
        base, customers = None, {}
    journaled = list(journal.entries(after_seq=after))
    parsed: list[Any] = []
    book.rebuild(journaled, parsed)
    for entry in journaled:
        named = session_customer(entry.kind, entry.payload, entry.session_id)
        if named is not None:
            customers[named[0]] = named[1]
    return Rebuilt(book, customers, after, journaled, parsed, base)
