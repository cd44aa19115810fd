"""The manager's registry: what it keeps of finished workers and of spawn requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from managers import manager as manager_module
from managers.manager import Manager
from managers.registry import Registry, StoredWorker
from managers.spawner import LocalProcessSpawner
from managers.supervision import WorkerRecord
from protocol.control import WorkerKind, WorkerState
from tradefleet.config import FleetConfig


def test_only_the_newest_finished_workers_and_recent_spawn_requests_are_kept(
        tmp_path: Path) -> None:
    registry = Registry(tmp_path / "m.sqlite")
    for epoch in range(1, 11):
        state = "up" if epoch in (1, 2) else ("stopped" if epoch % 2 else "failed")
        registry.save_worker(StoredWorker(f"w{epoch}", "market", epoch, state), now=epoch)
    registry.save_worker(StoredWorker("w1", "market", 1, "up"), now=100)  # touched lately
    registry.record_spawn_request("old", ["w3"], now=10.0)
    registry.record_spawn_request("new", ["w9"], now=20.0)

    registry.forget_finished(keep=3, requests_before=15.0)

    assert [w.id for w in registry.load_workers()] == ["w1", "w2", "w8", "w9", "w10"]
    assert registry.spawn_request("old") is None and registry.spawn_request("new") == ["w9"]
    registry.close()
    again = Registry(tmp_path / "m.sqlite")
    assert [w.id for w in again.load_workers(frozenset({"up"}))] == ["w1", "w2"]
    again.close()


def test_the_manager_lets_go_of_finished_workers_in_memory_and_in_its_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "KEEP_FINISHED", 2)
    manager = Manager(WorkerKind.MARKET, FleetConfig(), None, tmp_path,
                      {"join_token": "j", "operator_token": "o"}, [])
    for epoch in range(1, 7):
        record = WorkerRecord(id=f"w{epoch}", kind=WorkerKind.MARKET, epoch=epoch,
                              state=WorkerState.UP if epoch == 1 else WorkerState.FAILED,
                              spawned_at=float(epoch))
        manager.sup.records[record.id] = record
        manager.sup.dirty.add(record.id)
        manager.spawners[record.id] = LocalProcessSpawner()
    manager._forget_finished(100.0)
    assert len(manager.sup.records) == 6  # nothing let go before its last state is stored
    manager._persist_dirty()
    manager._forget_finished(100.0)
    assert sorted(manager.sup.records) == sorted(manager.spawners) == sorted(manager.docs) == [
        "w1", "w5", "w6"]
    assert [w.id for w in manager.registry.load_workers()] == ["w1", "w5", "w6"]
    manager.registry.close()
