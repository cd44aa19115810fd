"""The account journal: durable, ordered, fenced by epoch, per-session sequence numbers."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradefleet.service.walcheckpoint import RESTART_TRIES, WAL_SIZE_LIMIT, Checkpointer
from workers.broker import journal as journal_module
from workers.broker.journal import (
    LAST_ORDER_EVENT,
    Journal,
    JournalError,
    JournalFenced,
    JournalReader,
)


def test_entries_survive_reopen_in_order(tmp_path: Path) -> None:
    path = tmp_path / "acct.sqlite"
    j = Journal(path, "b-1", epoch=1)
    j.append("order_intent", {"client_order_id": "c1", "qty": "0.5"})
    j.append("order_accepted", {"client_order_id": "c1"})
    j.close()  # as good as a kill -9: every append was committed before it returned
    again = Journal(path, "b-2", epoch=2)
    assert [(e.seq, e.kind) for e in again.entries()] == [(1, "order_intent"),
                                                          (2, "order_accepted")]
    assert again.entries(after_seq=1).__next__().payload == {"client_order_id": "c1"}


def test_an_older_owner_is_fenced_once_a_newer_one_claims(tmp_path: Path) -> None:
    path = tmp_path / "acct.sqlite"
    old = Journal(path, "b-1", epoch=1)
    old.append("order_intent", {"client_order_id": "c1"})
    new = Journal(path, "b-2", epoch=2)
    with pytest.raises(JournalFenced):
        old.append("order_intent", {"client_order_id": "zombie"})
    assert [e.payload["client_order_id"] for e in new.entries()] == ["c1"]
    with pytest.raises(JournalFenced):
        Journal(path, "b-0", epoch=1)  # a zombie cannot even re-claim


def test_session_sequence_numbers_are_contiguous_per_session(tmp_path: Path) -> None:
    j = Journal(tmp_path / "a.sqlite", "b", epoch=1)
    for i in range(3):
        j.append("order_event", {"i": i}, session_id="s1")
        j.append("order_event", {"i": i}, session_id="s2")
    j.append("position", {"qty": "1"})
    assert [e.session_seq for e in j.session_entries("s1")] == [1, 2, 3]
    assert [e.payload["i"] for e in j.session_entries("s2", after_session_seq=1)] == [1, 2]


def test_sessions_past_the_cache_are_read_back_from_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An account has had as many sessions as algos ever connected: the journal keeps only
    recent ones in memory, and an older one's next seq and customer come from the file."""
    monkeypatch.setattr(journal_module, "SESSION_CACHE", 2)
    path = tmp_path / "a.sqlite"
    j = Journal(path, "b", epoch=1)
    for n in range(6):
        j.note_session(f"s{n}", f"cust{n % 2}")
        j.append("order_event", {"n": n}, session_id=f"s{n}")
    assert len(j._session_seqs) == 2 and len(j._customers) == 2
    assert j.append("order_event", {"n": 6}, session_id="s0").session_seq == 2
    assert [j.customer_of(f"s{n}") for n in range(6)] == ["cust0", "cust1"] * 3
    assert j.customer_of("never") is None
    assert len(j._session_seqs) == 2 and len(j._customers) == 2
    j.close()
    again = Journal(path, "b2", epoch=2)  # and they outlive the owner
    assert again.customer_of("s5") == "cust1"
    assert again.append("order_event", {}, session_id="s5").session_seq == 2


def test_a_session_is_written_once_and_a_fenced_owner_writes_none(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    old = Journal(path, "b", epoch=1)
    old.note_session("s1", "cust")
    old.note_session("s1", "cust")
    old.note_sessions({"s1": "cust", "s2": "cust"})
    Journal(path, "b2", epoch=2)
    with pytest.raises(JournalFenced):
        old.note_sessions({"s3": "cust"})
    with pytest.raises(JournalFenced):
        old.note_session("s4", "cust")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM sessions ORDER BY 1").fetchall() == [
            ("s1", "cust"), ("s2", "cust")]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["s1", "s2", None]), max_size=30))
def test_replay_after_any_point_has_no_gap_and_no_duplicate(tmp_path_factory, sessions) -> None:  # type: ignore[no-untyped-def]
    j = Journal(tmp_path_factory.mktemp("j") / "a.sqlite", "b", epoch=1)
    for n, sid in enumerate(sessions):
        j.append("e", {"n": n}, session_id=sid)
    for sid in ("s1", "s2"):
        seqs = [e.session_seq for e in j.session_entries(sid)]
        assert seqs == list(range(1, len(seqs) + 1))
        for cut in range(len(seqs) + 1):
            assert [e.session_seq for e in j.session_entries(sid, cut)] == seqs[cut:]


def test_every_append_that_returned_survives_a_kill_9_of_the_writer(tmp_path: Path) -> None:
    """The default durability: an append that returned is on record even if the writing
    process is killed -9 right after (the OS keeps the WAL pages; no fsync needed for that)."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "acct.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         ("import sys; from pathlib import Path; from workers.broker.journal import Journal\n"
         f"j = Journal(Path({str(path)!r}), 'b-1', epoch=1)\n"
         "for i in range(100000):\n"
         "    j.append('order_intent', {'i': i})\n"
         "    print(i, flush=True)\n")],
        stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    acknowledged = -1
    for line in writer.stdout:
        acknowledged = int(line)
        if acknowledged >= 300:
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    survivors = [e.payload["i"] for e in Journal(path, "b-2", epoch=2).entries()]
    assert survivors[: acknowledged + 1] == list(range(acknowledged + 1))


def test_checkpoints_run_beside_the_writer_and_keep_the_wal_bounded(tmp_path: Path) -> None:
    path = tmp_path / "acct.sqlite"
    j = Journal(path, "b-1", epoch=1, checkpoint_every_s=0.02)
    try:
        big = {"blob": "x" * 3000}
        for _ in range(3000):  # ~ 3,000 WAL frames, far more than the size limit's worth
            j.append("event", big, "s1")
        wal = path.with_name(path.name + "-wal")
        deadline = time.monotonic() + 10
        while True:  # the next append after a checkpoint rewinds and trims the WAL
            j.append("event", {"n": 1}, "s1")
            if wal.stat().st_size <= WAL_SIZE_LIMIT or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert wal.stat().st_size <= WAL_SIZE_LIMIT
        assert [e.session_seq for e in j.session_entries("s1", 3000)][:1] == [3001]
    finally:
        j.close()
    assert not j._checkpointer.is_alive()


def test_the_wal_is_cut_back_even_while_appends_never_pause(tmp_path: Path) -> None:
    """A passive checkpoint never finds the WAL fully copied when appends follow each other
    without a pause, so the WAL was never rewound and only grew; past its limit the
    checkpointer now restarts it, and the next append cuts the file back."""
    path = tmp_path / "acct.sqlite"
    j = Journal(path, "b-1", epoch=1, checkpoint_every_s=0.01, wal_limit=256 * 1024)
    wal = path.with_name(path.name + "-wal")
    try:
        big = {"blob": "x" * 1000}
        appended, size, largest = 0, 0, 0
        deadline = time.monotonic() + 30
        while appended < 20_000 and time.monotonic() < deadline:  # ~60 MB of WAL at most
            j.append("event", big, "s1")
            appended += 1
            size = wal.stat().st_size
            if size < largest:
                break
            largest = size
        assert size < largest, f"the WAL only grew: {size} bytes after {appended} appends"
        seqs = [e.session_seq for e in j.session_entries("s1")]
        assert seqs == list(range(1, appended + 1))
    finally:
        j.close()


def test_a_reader_in_the_way_makes_the_rewind_give_up_instead_of_holding_writes_back(
        tmp_path: Path) -> None:
    """A RESTART checkpoint waits for readers holding the write lock, so a slow reader (the
    snapshot side process) stalled every append for as long as the checkpoint waited. The
    checkpointer has no busy handler now: it gives way to the reader, the writer goes on, and
    the rewind happens once the reader has gone."""
    path = tmp_path / "acct.sqlite"
    limit = 64 * 1024
    j = Journal(path, "b-1", epoch=1, checkpoint_every_s=3600, wal_limit=limit)
    checkpointer = Checkpointer(path, every_s=3600, wal_limit=limit)
    db = Checkpointer.connect(path)
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # it never waits for a lock
    reader = JournalReader(path)
    wal = path.with_name(path.name + "-wal")
    try:
        for n in range(200):
            j.append("event", {"n": n, "blob": "x" * 1000}, "s1")
        slow = reader.entries()  # one query, read lazily: its snapshot stays open meanwhile
        first = next(slow)
        assert checkpointer.rewind(db) is False
        assert checkpointer.deferred == RESTART_TRIES and checkpointer.rewinds == 0
        j.append("event", {"n": 200}, "s1")  # the writer was never held back
        assert wal.stat().st_size > limit  # and the WAL was not rewound under the reader
        assert [first.seq] + [e.seq for e in slow] == list(range(first.seq, first.seq + 200))
        assert checkpointer.rewind(db) is True  # the reader has gone
        j.append("event", {"n": 201}, "s1")
        assert wal.stat().st_size <= limit
        assert [e.session_seq for e in j.session_entries("s1")] == list(range(1, 203))
    finally:
        reader.close()
        db.close()
        checkpointer.stop()
        j.close()


def test_an_orders_last_event_is_found_by_index_also_in_a_journal_older_than_it(
        tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    j = Journal(path, "b", epoch=1)
    j.append("request", {"msg": {"client_order_id": "c1"}})
    j.append("event", {"client_order_id": "c1", "status": "accepted"}, "s1")
    j.append("event", {"client_order_id": "c2", "status": "accepted"}, "s1")
    j.append("event", {"client_order_id": "c1", "status": "cancelled"}, "s1")
    j.append("risk", {"client_order_id": "c1", "status": "not an order event"})
    j._db.execute("DROP INDEX entries_order")  # as a journal written before the index was
    j.close()
    again = Journal(path, "b", epoch=2)
    last = again.last_order_event("c1")
    assert last is not None and (last.seq, last.payload["status"]) == (4, "cancelled")
    assert last.session_id == "s1" and last.session_seq == 3
    assert again.last_order_event("c3") is None
    plan = again._db.execute(f"EXPLAIN QUERY PLAN {LAST_ORDER_EVENT}", ("c1",)).fetchall()
    assert "USING INDEX entries_order" in str(plan)  # no scan of the whole history
    again.close()


def test_a_reader_follows_the_owner_without_claiming_and_old_snapshot_tables_go(
        tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    with sqlite3.connect(path) as db:  # a journal from before snapshots had a file of their own
        db.execute("CREATE TABLE snapshots (seq INTEGER PRIMARY KEY, state BLOB)")
    j = Journal(path, "b", epoch=1)
    assert j._db.execute("SELECT name FROM sqlite_master WHERE name = 'snapshots'"
                         ).fetchone() is None
    reader = JournalReader(path)
    assert reader.owner_epoch() == 1 and reader.last_seq() == 0
    j.append("event", {"client_order_id": "c1"}, "s1")
    rows = reader.entries()
    first = next(rows)  # a read in progress sees the journal as of its start ...
    j.append("event", {"client_order_id": "c2"}, "s1")
    assert [first.seq, *(e.seq for e in rows)] == [1]
    assert [e.seq for e in reader.entries()] == [1, 2]  # ... the next one sees the append
    assert reader.last_order_event("c2") is not None
    Journal(path, "b2", epoch=2).close()
    assert reader.owner_epoch() == 2
    with pytest.raises(JournalFenced):  # reading never claimed: epoch 1 is fenced by 2 only
        j.append("event", {"client_order_id": "c3"})
    reader.close()
    j.close()
    with pytest.raises(JournalError):
        JournalReader(tmp_path / "missing.sqlite")
