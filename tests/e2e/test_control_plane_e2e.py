"""Issue 2 acceptance, end to end: `tradefleet up` as a user starts it, then chaos."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.support.fleet import (
    RunningFleet,
    pid_alive,
    processes_under,
    start_fleet,
    wait_for,
    workers_of,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    running = start_fleet(tmp_path / "fleet")
    try:
        yield running
    finally:
        running.stop()


def all_up(fleet: RunningFleet, expected: dict[str, int]) -> dict | None:  # type: ignore[type-arg]
    doc = fleet.fleet()
    for kind, n in expected.items():
        workers = workers_of(doc, kind)
        if len(workers) != n or any(w["state"] != "up" for w in workers):
            return None
    return doc


def test_up_then_status_shows_every_manager_and_worker_up(fleet: RunningFleet) -> None:
    doc = wait_for(lambda: all_up(fleet, {"broker": 1, "market": 2, "trader": 1}), 60,
                   "default workers up")
    [location] = doc["locations"]
    assert location["state"] == "ok"
    assert sorted(m["kind"] for m in location["managers"]) == ["broker", "market", "trader"]
    assert all(m["state"] == "up" for m in location["managers"])

    status = fleet.cli("status")
    assert status.returncode == 0, status.stderr
    for worker in workers_of(doc):
        assert worker["id"] in status.stdout
    as_json = fleet.cli("status", "--json")
    assert as_json.returncode == 0
    assert '"locations"' in as_json.stdout


def test_spawn_three_of_each_kind_through_rest_all_reach_up(fleet: RunningFleet) -> None:
    wait_for(lambda: all_up(fleet, {"broker": 1, "market": 2, "trader": 1}), 60, "defaults up")
    for kind in ("broker", "market", "trader"):
        request_id = uuid.uuid4().hex
        status, body = fleet.infra.call("POST", f"/v1/locations/local/{kind}/spawn",
                                        {"count": 3, "request_id": request_id})
        assert status == 200, body
        assert len(body["workers"]) == 3
        # The same request id again is idempotent: nothing new is spawned.
        status, again = fleet.infra.call("POST", f"/v1/locations/local/{kind}/spawn",
                                         {"count": 3, "request_id": request_id})
        assert status == 200 and again["workers"] == body["workers"]
    wait_for(lambda: all_up(fleet, {"broker": 4, "market": 5, "trader": 4}), 90,
             "all spawned workers up")


def test_kill_9_of_a_worker_is_replaced_with_a_higher_epoch(fleet: RunningFleet) -> None:
    doc = wait_for(lambda: all_up(fleet, {"broker": 1, "market": 2, "trader": 1}), 60, "up")
    victim = workers_of(doc, "market")[0]
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> dict | None:  # type: ignore[type-arg]
        markets = workers_of(fleet.fleet(), "market")
        ids = {w["id"] for w in markets}
        if victim["id"] in ids or len(markets) != 2 or any(w["state"] != "up" for w in markets):
            return None
        return next(w for w in markets if w["epoch"] > max(x["epoch"] for x in
                                                            workers_of(doc, "market")))

    new = wait_for(replaced, 60, "replacement of the killed market worker")
    assert new["id"] != victim["id"] and new["epoch"] > victim["epoch"]


def test_kill_9_of_a_manager_readopts_the_same_workers(fleet: RunningFleet) -> None:
    doc = wait_for(lambda: all_up(fleet, {"broker": 1, "market": 2, "trader": 1}), 60, "up")
    fleet.manager("market").call("POST", "/v1/workers/spawn", {"count": 1, "request_id": "x"})
    doc = wait_for(lambda: all_up(fleet, {"market": 3}), 60, "three markets up")
    before = {w["id"]: (w["pid"], w["epoch"]) for w in workers_of(doc, "market")}
    old_pid = fleet.manager_pid("market")
    old_epoch = fleet.manager("market").get("/health")["epoch"]
    old_url = fleet.manager_url_files["market"].read_text().strip()
    os.kill(old_pid, signal.SIGKILL)

    # `tradefleet up` restarts the manager; the new one re-adopts instead of spawning.
    def restarted() -> dict | None:  # type: ignore[type-arg]
        health = fleet.manager("market").get("/health")
        return health if health["epoch"] > old_epoch else None

    wait_for(restarted, 60, "market manager restarted")
    after_doc = wait_for(lambda: all_up(fleet, {"market": 3}), 60, "markets re-adopted and up")
    after = {w["id"]: (w["pid"], w["epoch"]) for w in workers_of(after_doc, "market")}
    assert after == before, "the same workers (ids, pids, epochs) must be re-adopted"
    assert all(pid_alive(pid) for pid, _ in after.values())
    view = fleet.manager("market").get("/v1/manager")
    assert view["desired"] == 3
    # Back on the port the OS gave it at first: the URL algos were given still works.
    assert fleet.manager_url_files["market"].read_text().strip() == old_url
    wait_for(lambda: f"market-manager is back at {old_url}" in fleet.output(), 10,
             "the restart announced")


def test_kill_9_of_the_infra_manager_brings_it_back_at_its_url_with_the_location(
        fleet: RunningFleet) -> None:
    wait_for(lambda: all_up(fleet, {"broker": 1, "market": 2, "trader": 1}), 60, "up")
    old_pid = fleet.infra.get("/health")["pid"]
    os.kill(old_pid, signal.SIGKILL)

    # `tradefleet up` restarts it on the port it had (chosen by the OS at first): the URL the
    # managers check in with and the operator's dashboard URL stay valid.
    wait_for(lambda: fleet.infra.get("/health")["pid"] != old_pid, 60, "infra restarted")

    def location_whole() -> dict | None:  # type: ignore[type-arg]
        doc = all_up(fleet, {"broker": 1, "market": 2, "trader": 1})
        if doc is None:
            return None
        [location] = doc["locations"]
        managers = location["managers"]
        return doc if len(managers) == 3 and all(m["state"] == "up" for m in managers) \
            else None

    wait_for(location_whole, 60, "the location's managers and workers back on the dashboard")
    assert (fleet.data_dir / "run" / "infra.url").read_text().strip() == fleet.infra.base


def test_drained_worker_reports_draining_takes_no_new_work_and_exits(fleet: RunningFleet
                                                                      ) -> None:
    doc = wait_for(lambda: all_up(fleet, {"broker": 1, "market": 2, "trader": 1}), 60, "up")
    victim, other = workers_of(doc, "market")
    status, body = fleet.infra.call("POST", f"/v1/workers/{victim['id']}/drain")
    assert status == 200, body
    wait_for(lambda: victim["id"] not in {w["id"] for w in workers_of(fleet.fleet())},
             30, "drained worker to leave the fleet")
    wait_for(lambda: not pid_alive(victim["pid"]), 30, "drained worker process to exit")
    # Draining lowers the desired count, so the worker is not replaced.
    assert [w["id"] for w in workers_of(fleet.fleet(), "market")] == [other["id"]]
    events = fleet.manager("market").get("/v1/events")["events"]
    names = [e["event"] for e in events if e.get("worker_id") == victim["id"]]
    assert "draining" in names and "stopped" in names
    assert names.index("draining") < names.index("stopped")
    assert "failed" not in names


def test_draining_a_slot_owner_hands_its_slot_to_a_new_worker(fleet: RunningFleet) -> None:
    doc = wait_for(lambda: all_up(fleet, {"trader": 1}), 60, "trader up")
    [owner] = workers_of(doc, "trader")
    wait_for(lambda: workers_of(fleet.fleet(), "trader")[0]["info"].get("slot") == "ma-cross",
             30, "hosted trader assigned")
    status, body = fleet.infra.call("POST", f"/v1/workers/{owner['id']}/drain")
    assert status == 200, body

    def reassigned() -> dict | None:  # type: ignore[type-arg]
        traders = workers_of(fleet.fleet(), "trader")
        return next((w for w in traders if w["id"] != owner["id"] and w["state"] == "up"
                     and w["info"].get("slot") == "ma-cross"), None)

    new = wait_for(reassigned, 60, "the hosted trader to move to a new worker")
    assert new["epoch"] > owner["epoch"]
    wait_for(lambda: not pid_alive(owner["pid"]), 30, "drained trader to exit")


def test_ctrl_c_on_up_stops_everything(tmp_path: Path) -> None:
    running = start_fleet(tmp_path / "fleet")
    doc = wait_for(lambda: all_up(running, {"broker": 1, "market": 2, "trader": 1}), 60, "up")
    pids = [w["pid"] for w in workers_of(doc)]
    assert running.stop() == 0
    assert not any(pid_alive(p) for p in pids)
    assert processes_under(tmp_path / "fleet") == []
    assert "nothing left running" in running.output()
