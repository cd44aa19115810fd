"""The fleet aggregation core, without sockets: silence, unreachable locations, counts, order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra_manager.clock import ManualClock
from infra_manager.fleet_state import (
    CheckinOutcome,
    FleetState,
    ManagerLink,
    SnapshotOutcome,
    StaleCheckin,
)
from protocol.control import Load, ManagerCheckin, WorkerKind, WorkerState
from protocol.fleet import LocationState, ManagerSnapshot, ManagerState, ManagerView, WorkerView

SILENCE = 5.0


def checkin(manager_id: str, location: str = "paris", kind: WorkerKind = WorkerKind.BROKER,
            epoch: int = 1, url: str | None = None) -> ManagerCheckin:
    return ManagerCheckin(manager_id=manager_id, location=location, kind=kind,
                          url=url or f"http://127.0.0.1:1/{manager_id}", epoch=epoch,
                          version="0.1.0")


def worker(worker_id: str, state: WorkerState = WorkerState.UP, kind: WorkerKind = WorkerKind.BROKER,
           age: float | None = 0.5, epoch: int = 1) -> WorkerView:
    return WorkerView(id=worker_id, kind=kind, state=state, pid=4242, epoch=epoch,
                      url="http://127.0.0.1:2", load=Load(), last_heartbeat_age_s=age,
                      uptime_s=10.0)


def snapshot(c: ManagerCheckin, *workers: WorkerView, desired: int | None = None,
             events: list[dict[str, Any]] | None = None, epoch: int | None = None
             ) -> ManagerSnapshot:
    view = ManagerView(id=c.manager_id, kind=c.kind, location=c.location, url=c.url,
                       epoch=epoch or c.epoch,
                       desired=len(workers) if desired is None else desired,
                       workers=list(workers))
    return ManagerSnapshot(manager=view, events=events or [])


def link_of(c: ManagerCheckin) -> ManagerLink:
    return ManagerLink(c.manager_id, c.location, c.kind, c.url, c.epoch)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fleet(clock: ManualClock) -> FleetState:
    return FleetState("infra-test", SILENCE, clock)


def location(fleet: FleetState, name: str) -> Any:
    return next(loc for loc in fleet.view().locations if loc.name == name)


def test_empty_fleet_has_no_locations(fleet: FleetState) -> None:
    view = fleet.view()
    assert view.infra_id == "infra-test"
    assert view.locations == []


def test_checked_in_manager_is_up_before_its_first_snapshot(fleet: FleetState) -> None:
    assert fleet.check_in(checkin("b1")) is CheckinOutcome.NEW
    loc = location(fleet, "paris")
    assert loc.state is LocationState.OK
    (manager,) = loc.managers
    assert (manager.id, manager.state, manager.workers) == ("b1", ManagerState.UP, [])


def test_snapshot_workers_appear_with_counts(fleet: FleetState) -> None:
    c = checkin("b1")
    fleet.check_in(c)
    outcome = fleet.apply(link_of(c), snapshot(
        c, worker("w2"), worker("w1"), worker("w3", WorkerState.STARTING), desired=3))
    assert outcome is SnapshotOutcome.ACCEPTED
    loc = location(fleet, "paris")
    assert [w.id for w in loc.managers[0].workers] == ["w1", "w2", "w3"]
    assert loc.managers[0].desired == 3
    assert loc.counts["up"] == 2
    assert loc.counts["starting"] == 1
    assert set(loc.counts) == {s.value for s in WorkerState}


def test_manager_unheard_for_the_silence_timeout_is_silent(fleet: FleetState,
                                                           clock: ManualClock) -> None:
    c = checkin("b1")
    fleet.check_in(c)
    fleet.apply(link_of(c), snapshot(c, worker("w1")))
    clock.advance(SILENCE - 0.01)
    assert fleet.tick() is False
    assert location(fleet, "paris").managers[0].state is ManagerState.UP
    clock.advance(0.01)
    assert fleet.tick() is True
    manager = location(fleet, "paris").managers[0]
    assert manager.state is ManagerState.SILENT
    assert manager.last_seen_age_s == pytest.approx(SILENCE)


def test_snapshot_after_silence_brings_the_manager_back(fleet: FleetState,
                                                        clock: ManualClock) -> None:
    c = checkin("b1")
    fleet.check_in(c)
    clock.advance(SILENCE + 1)
    fleet.tick()
    fleet.apply(link_of(c), snapshot(c, worker("w1")))
    loc = location(fleet, "paris")
    assert loc.state is LocationState.OK
    assert loc.managers[0].state is ManagerState.UP
    assert loc.managers[0].workers[0].state is WorkerState.UP
    names = [e["event"] for e in fleet.events_since(0)]
    assert names.index("manager_silent") < names.index("manager_heard")
    assert names.index("location_unreachable") < names.index("location_ok")


def test_repeated_checkin_does_not_count_as_heard(fleet: FleetState, clock: ManualClock) -> None:
    """A manager we cannot reach but that reaches us must still go silent."""
    c = checkin("b1")
    fleet.check_in(c)
    for _ in range(6):
        clock.advance(1.0)
        assert fleet.check_in(c) is CheckinOutcome.RENEWED
    assert location(fleet, "paris").managers[0].state is ManagerState.SILENT


def test_all_managers_silent_makes_the_location_unreachable(fleet: FleetState,
                                                            clock: ManualClock) -> None:
    checkins = [checkin(f"{k.value}-1", kind=k) for k in WorkerKind]
    for c in checkins:
        fleet.check_in(c)
        fleet.apply(link_of(c), snapshot(c, worker(f"{c.kind.value}-w", kind=c.kind),
                                         worker(f"{c.kind.value}-gone", WorkerState.FAILED,
                                                kind=c.kind)))
    clock.advance(SILENCE)
    fleet.tick()
    loc = location(fleet, "paris")
    assert loc.state is LocationState.UNREACHABLE
    states = {w.id: w.state for m in loc.managers for w in m.workers}
    assert states["broker-w"] is WorkerState.UNREACHABLE
    assert states["market-w"] is WorkerState.UNREACHABLE
    assert states["broker-gone"] is WorkerState.FAILED  # a known end state stays as it was
    assert loc.counts["unreachable"] == 3
    assert loc.counts["up"] == 0
    assert loc.counts["failed"] == 3


def test_some_managers_silent_makes_the_location_degraded(fleet: FleetState,
                                                          clock: ManualClock) -> None:
    broker, market = checkin("b1"), checkin("m1", kind=WorkerKind.MARKET)
    for c in (broker, market):
        fleet.check_in(c)
        fleet.apply(link_of(c), snapshot(c, worker(f"{c.manager_id}-w", kind=c.kind)))
    clock.advance(SILENCE / 2)
    fleet.apply(link_of(market), snapshot(market, worker("m1-w", kind=WorkerKind.MARKET)))
    clock.advance(SILENCE / 2)
    fleet.tick()
    loc = location(fleet, "paris")
    assert loc.state is LocationState.DEGRADED
    by_id = {m.id: m for m in loc.managers}
    assert by_id["b1"].state is ManagerState.SILENT
    assert by_id["b1"].workers[0].state is WorkerState.UNREACHABLE
    assert by_id["m1"].state is ManagerState.UP
    assert by_id["m1"].workers[0].state is WorkerState.UP


def test_one_unreachable_location_does_not_affect_another(fleet: FleetState,
                                                          clock: ManualClock) -> None:
    paris, tokyo = checkin("p", location="paris"), checkin("t", location="tokyo")
    for c in (paris, tokyo):
        fleet.check_in(c)
        fleet.apply(link_of(c), snapshot(c, worker(f"{c.manager_id}-w")))
    clock.advance(SILENCE)
    fleet.apply(link_of(tokyo), snapshot(tokyo, worker("t-w")))
    fleet.tick()
    assert location(fleet, "paris").state is LocationState.UNREACHABLE
    assert location(fleet, "tokyo").state is LocationState.OK
    assert location(fleet, "tokyo").counts["up"] == 1


def test_heartbeat_age_grows_between_snapshots(fleet: FleetState, clock: ManualClock) -> None:
    c = checkin("b1")
    fleet.check_in(c)
    fleet.apply(link_of(c), snapshot(c, worker("w1", age=0.25), worker("w2", age=None)))
    clock.advance(2.0)
    workers = {w.id: w for w in location(fleet, "paris").managers[0].workers}
    assert workers["w1"].last_heartbeat_age_s == pytest.approx(2.25)
    assert workers["w2"].last_heartbeat_age_s is None


def test_workers_are_listed_in_spawn_order(fleet: FleetState) -> None:
    c = checkin("b1")
    fleet.check_in(c)
    fleet.apply(link_of(c), snapshot(c, worker("w-b", epoch=3), worker("w-a", epoch=2),
                                     worker("w-c", epoch=2)))
    assert [w.id for w in location(fleet, "paris").managers[0].workers] == ["w-a", "w-c", "w-b"]


def test_locations_and_managers_are_ordered(fleet: FleetState) -> None:
    for c in (checkin("z-trader", "zurich", WorkerKind.TRADER),
              checkin("a-market", "amsterdam", WorkerKind.MARKET),
              checkin("a-broker", "amsterdam", WorkerKind.BROKER),
              checkin("a-trader", "amsterdam", WorkerKind.TRADER)):
        fleet.check_in(c)
    view = fleet.view()
    assert [loc.name for loc in view.locations] == ["amsterdam", "zurich"]
    assert [m.kind for m in view.locations[0].managers] == [
        WorkerKind.BROKER, WorkerKind.MARKET, WorkerKind.TRADER]


def test_restarted_manager_replaces_the_old_generation(fleet: FleetState) -> None:
    old = checkin("b1", epoch=1)
    fleet.check_in(old)
    fleet.apply(link_of(old), snapshot(old, worker("w1")))
    new = checkin("b1", epoch=2, url="http://127.0.0.1:9/b1")
    assert fleet.check_in(new) is CheckinOutcome.REPLACED
    # A late frame from the old pipe is refused; the new link's frames are taken.
    assert fleet.apply(link_of(old), snapshot(old, worker("zombie"))) is SnapshotOutcome.STALE
    assert fleet.apply(link_of(new), snapshot(new, worker("w1"))) is SnapshotOutcome.ACCEPTED
    (manager,) = location(fleet, "paris").managers
    assert (manager.epoch, manager.url, [w.id for w in manager.workers]) == (
        2, "http://127.0.0.1:9/b1", ["w1"])


def test_checkin_from_an_older_generation_is_refused(fleet: FleetState) -> None:
    fleet.check_in(checkin("b1", epoch=3))
    with pytest.raises(StaleCheckin) as info:
        fleet.check_in(checkin("b1", epoch=2))
    assert (info.value.given, info.value.known) == (2, 3)
    assert location(fleet, "paris").managers[0].epoch == 3


def test_frames_from_unknown_or_mismatched_managers_are_ignored(fleet: FleetState) -> None:
    c = checkin("b1")
    stranger = checkin("x9")
    assert fleet.apply(link_of(stranger), snapshot(stranger)) is SnapshotOutcome.UNKNOWN_MANAGER
    fleet.check_in(c)
    assert fleet.apply(link_of(c), snapshot(stranger)) is SnapshotOutcome.MISMATCH
    assert location(fleet, "paris").managers[0].workers == []


def test_manager_events_are_logged_once_with_their_origin(fleet: FleetState) -> None:
    c = checkin("b1")
    fleet.check_in(c)
    spawned = {"ts": 1.5, "event": "spawned", "worker_id": "w1", "epoch": 1}
    fleet.apply(link_of(c), snapshot(c, events=[spawned]))
    fleet.apply(link_of(c), snapshot(c, events=[spawned]))  # re-sent after a reconnect
    logged = [e for e in fleet.events_since(0) if e["source"] == "manager"]
    assert len(logged) == 1
    assert logged[0] | {"seq": 0} == {**spawned, "location": "paris", "kind": "broker",
                                      "manager_id": "b1", "source": "manager", "seq": 0}


def test_events_since_returns_only_newer_lines(fleet: FleetState) -> None:
    fleet.check_in(checkin("b1"))
    mark = fleet.last_event_seq
    fleet.record_operator_action("spawn", location="paris", kind="broker", status=200)
    newer = fleet.events_since(mark)
    assert [(e["event"], e["action"], e["status"]) for e in newer] == [("operator", "spawn", 200)]
    assert fleet.events_since(fleet.last_event_seq) == []


def test_commands_go_to_a_heard_manager_of_that_kind(fleet: FleetState, clock: ManualClock) -> None:
    old = checkin("b-old", epoch=5)
    fleet.check_in(old)
    clock.advance(SILENCE)
    fresh = checkin("b-new", epoch=1)
    fleet.check_in(fresh)
    assert fleet.manager_for("paris", WorkerKind.BROKER) == link_of(fresh)
    assert fleet.manager_for("paris", WorkerKind.MARKET) is None
    assert fleet.manager_for("tokyo", WorkerKind.BROKER) is None


def test_owner_of_finds_the_manager_listing_the_worker(fleet: FleetState) -> None:
    b, m = checkin("b1"), checkin("m1", kind=WorkerKind.MARKET)
    for c in (b, m):
        fleet.check_in(c)
    fleet.apply(link_of(m), snapshot(m, worker("mw", kind=WorkerKind.MARKET)))
    assert fleet.owner_of("mw") == link_of(m)
    assert fleet.owner_of("nobody") is None


def test_version_grows_only_on_visible_change(fleet: FleetState, clock: ManualClock) -> None:
    c = checkin("b1")
    start = fleet.version
    fleet.check_in(c)
    assert fleet.version > start
    v = fleet.version
    fleet.tick()
    assert fleet.version == v
    clock.advance(SILENCE)
    fleet.tick()
    assert fleet.version > v


def test_silence_timeout_must_be_positive(clock: ManualClock) -> None:
    with pytest.raises(ValueError):
        FleetState("x", 0, clock)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["paris", "tokyo"]),
                          st.sampled_from(list(WorkerKind)),
                          st.floats(min_value=0, max_value=3 * SILENCE)),
                min_size=1, max_size=8, unique_by=lambda t: (t[0], t[1])),
       st.lists(st.sampled_from(list(WorkerState)), max_size=6))
def test_location_state_and_counts_follow_the_managers(managers: list[tuple[str, WorkerKind, float]],
                                                       worker_states: list[WorkerState]) -> None:
    """Whatever the silences: unreachable iff all silent, degraded iff some, counts add up."""
    clock = ManualClock()
    fleet = FleetState("infra-prop", SILENCE, clock)
    heard_at: dict[str, float] = {}
    # Check everybody in at t=0 and send a last snapshot at t=3*SILENCE - quiet.
    for loc, kind, _ in managers:
        fleet.check_in(checkin(f"{loc}-{kind.value}", loc, kind))
    timeline = sorted(managers, key=lambda m: -m[2])
    for loc, kind, quiet in timeline:
        target = 3 * SILENCE - quiet
        clock.advance(max(0.0, target - (clock.monotonic() - 1000.0)))
        c = checkin(f"{loc}-{kind.value}", loc, kind)
        workers = [worker(f"{c.manager_id}-{i}", s, kind) for i, s in enumerate(worker_states)]
        fleet.apply(link_of(c), snapshot(c, *workers))
        heard_at[c.manager_id] = clock.monotonic()
    clock.advance(max(0.0, 3 * SILENCE - (clock.monotonic() - 1000.0)))
    fleet.tick()
    for view in fleet.view().locations:
        silent = [now_silent for now_silent in
                  (clock.monotonic() - heard_at[m.id] >= SILENCE for m in view.managers)]
        assert [m.state is ManagerState.SILENT for m in view.managers] == silent
        if all(silent):
            assert view.state is LocationState.UNREACHABLE
        elif any(silent):
            assert view.state is LocationState.DEGRADED
        else:
            assert view.state is LocationState.OK
        assert sum(view.counts.values()) == len(view.managers) * len(worker_states)
        for m in view.managers:
            for w in m.workers:
                if m.state is ManagerState.SILENT:
                    assert w.state not in (WorkerState.UP, WorkerState.STARTING,
                                           WorkerState.SUSPECT, WorkerState.DRAINING)


def test_worker_events_are_logged_with_their_category_and_told_apart_by_n(
        fleet: FleetState) -> None:
    c = checkin("b1")
    fleet.check_in(c)
    base = {"ts": 100.0, "event": "risk_rejected", "category": "risk", "worker_id": "w1",
            "epoch": 1, "account": "acct", "code": "kill_switch",
            "message": "trading is stopped"}
    fleet.apply(link_of(c), snapshot(c, events=[{**base, "n": 1}, {**base, "n": 2}]))
    fleet.apply(link_of(c), snapshot(c, events=[{**base, "n": 2}]))  # a repeat
    logged = [e for e in fleet.events_since(0) if e["event"] == "risk_rejected"]
    assert [e["n"] for e in logged] == [1, 2]
    assert all(e["category"] == "risk" and e["account"] == "acct" and e["location"] == "paris"
               and e["source"] == "manager" and e["kind"] == "broker" for e in logged)
