"""Snapshot files and the side process that stores them (`workers.broker.snapshotter`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from protocol.risk import RiskLimits
from workers.broker.journal import Journal
from workers.broker.snapshots import (
    SnapshotFenced,
    read_snapshot,
    snapshot_path,
    stored_seq,
    write_snapshot,
)
from workers.broker.snapshotter import EXIT_FENCED, store


def test_a_snapshot_file_is_replaced_whole_never_by_an_older_one_nor_by_a_fenced_writer(
        tmp_path: Path) -> None:
    path = snapshot_path(tmp_path / "acct.sqlite")
    assert path.name == "acct.snapshot" and read_snapshot(path) is None and stored_seq(path) == 0
    assert write_snapshot(path, 5, 1, {"books": [5]}, lambda: True)
    assert read_snapshot(path) == (5, {"books": [5]}) and stored_seq(path) == 5
    assert not write_snapshot(path, 4, 1, {"books": [4]}, lambda: True)  # older: kept 5
    assert not write_snapshot(path, 5, 1, {"books": ["again"]}, lambda: True)
    with pytest.raises(SnapshotFenced):
        write_snapshot(path, 9, 1, {"books": [9]}, lambda: False)
    assert read_snapshot(path) == (5, {"books": [5]})
    assert write_snapshot(path, 9, 2, {"books": [9]}, lambda: True)
    assert read_snapshot(path) == (9, {"books": [9]})
    assert [p.name for p in tmp_path.iterdir()] == ["acct.snapshot"]  # no temporary left
    path.write_bytes(b'{"seq": 12}\n{"books": [1')  # torn: the reader says so
    with pytest.raises(ValueError):
        read_snapshot(path)
    path.write_bytes(b"garbage")
    assert stored_seq(path) == 0


def job(journal: Path, epoch: int) -> dict[str, object]:
    return {"journal": str(journal), "account": "acct", "epoch": epoch, "retain_finished": 100,
            "limits": RiskLimits().model_dump(mode="json")}


def test_the_side_process_stores_as_of_the_last_entry_and_only_for_the_owning_epoch(
        tmp_path: Path) -> None:
    path = tmp_path / "acct.sqlite"
    journal = Journal(path, "w1", epoch=1)
    journal.append("owner", {"worker_id": "w1", "epoch": 1})
    result = store(job(path, 1))
    assert (result["seq"], result["stored"], result["replayed"]) == (1, True, 1)
    assert store(job(path, 1)) == {"seq": 1, "stored": False}  # nothing new
    journal.append("owner", {"worker_id": "w1", "epoch": 1})
    result = store(job(path, 1))
    assert (result["seq"], result["from_seq"], result["replayed"]) == (2, 1, 1)
    Journal(path, "w2", epoch=2).close()  # a newer owner: epoch 1 stores nothing more
    journal.close()
    with pytest.raises(SnapshotFenced):
        store(job(path, 1))
    # As a process: one JSON line on stdout, the exit status says why.
    ran = subprocess.run([sys.executable, "-m", "workers.broker.snapshotter"], check=False,
                         input=orjson.dumps(job(path, 1)), capture_output=True, timeout=60)
    assert ran.returncode == EXIT_FENCED and b"no longer owns" in ran.stdout
    ran = subprocess.run([sys.executable, "-m", "workers.broker.snapshotter"], check=False,
                         input=b"{not json", capture_output=True, timeout=60)
    assert ran.returncode == 1 and orjson.loads(ran.stdout)["error"]
    assert stored_seq(snapshot_path(path)) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_side_process_asks_to_be_killed_with_its_parent() -> None:
    probe = ("import ctypes, ctypes.util\n"
             "from workers.broker.snapshotter import die_with_parent\n"
             "die_with_parent()\n"
             "libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)\n"
             "signal = ctypes.c_int(0)\n"
             "assert libc.prctl(2, ctypes.byref(signal)) == 0\n"  # PR_GET_PDEATHSIG
             "print(signal.value)\n")
    ran = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         timeout=60)
    assert int(ran.stdout) == 9  # SIGKILL
