"""The manager's pure supervision core: lifecycle, replacement, backoff, partition hold."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from managers.supervision import (
    Action,
    Assign,
    ClosePipe,
    Kill,
    OpenPipe,
    SendCommand,
    Spawn,
    Supervisor,
    WorkerRecord,
)
from protocol.control import CommandAction, Load, StatusReport, WorkerKind, WorkerState
from tradefleet.config import Timeouts

T = Timeouts(spawn_ready_timeout_s=10, pipe_grace_s=5, restart_backoff_initial_s=1,
             restart_backoff_max_s=8, drain_timeout_s=10, stop_grace_s=1)


def state_now(rec: WorkerRecord) -> WorkerState:
    """The record's state, read afresh (mypy would keep an earlier assert's narrowing)."""
    return rec.state


class Fleet:
    """Drives a Supervisor the way the shell does, with a fake clock and instant spawns."""

    def __init__(self, desired: int) -> None:
        self.sup = Supervisor(WorkerKind.MARKET, T, desired)
        self.now = 1000.0
        self.epoch = 0
        self.killed: list[str] = []

    def step(self, dt: float = 0.1) -> list[Action]:
        self.now += dt
        actions = self.sup.plan(self.now)
        for action in actions:
            if isinstance(action, Spawn):
                self.sup.spawn_started()
                self.epoch += 1
                self.sup.spawned(WorkerRecord(id=f"w{self.epoch}", kind=WorkerKind.MARKET,
                                              epoch=self.epoch, state=WorkerState.STARTING,
                                              spawned_at=self.now), self.now)
            elif isinstance(action, Kill):
                self.killed.append(action.worker_id)
        return actions

    def bring_up(self, worker_id: str) -> None:
        assert self.sup.checked_in(worker_id, "http://x", 1, self.now) == [OpenPipe(worker_id)]
        self.sup.pipe_up(worker_id, self.now)

    def states(self) -> dict[str, WorkerState]:
        return {r.id: r.state for r in self.sup.records.values()}


def test_spawns_up_to_desired_and_marks_up_after_pipe() -> None:
    f = Fleet(desired=3)
    f.step()
    assert list(f.states().values()) == [WorkerState.STARTING] * 3
    for wid in list(f.states()):
        f.bring_up(wid)
    f.step()
    assert set(f.states().values()) == {WorkerState.UP}
    assert f.step() == []  # steady state: nothing to do


def test_worker_that_never_checks_in_is_failed_and_replaced() -> None:
    f = Fleet(desired=1)
    f.step()
    f.step(T.spawn_ready_timeout_s + 0.1)
    assert f.states()["w1"] is WorkerState.FAILED
    assert "w1" in f.killed
    f.step(T.restart_backoff_initial_s + 0.1)
    assert f.states()["w2"] is WorkerState.STARTING
    assert f.sup.records["w2"].replaces == "w1"
    assert any(e["event"] == "replaced" and e["old_worker_id"] == "w1" for e in f.sup.events)


def test_process_exit_fails_at_once_and_is_replaced_at_once_with_a_higher_epoch() -> None:
    f = Fleet(desired=1)
    f.step()
    f.bring_up("w1")
    f.sup.process_exited("w1", -9, f.now)
    assert f.states()["w1"] is WorkerState.FAILED
    assert any(isinstance(a, Spawn) for a in f.step())  # no backoff for a first failure
    assert f.sup.records["w2"].epoch > f.sup.records["w1"].epoch


def test_a_second_failure_in_a_row_waits_for_the_backoff() -> None:
    f = Fleet(desired=1)
    f.step()
    f.bring_up("w1")
    f.sup.process_exited("w1", -9, f.now)
    f.step()
    f.sup.process_exited("w2", -9, f.now)  # the replacement dies before it is stable
    assert not any(isinstance(a, Spawn) for a in f.step(T.restart_backoff_initial_s - 0.1))
    assert any(isinstance(a, Spawn) for a in f.step(0.2))


def test_lost_pipe_is_suspect_then_failed_after_grace() -> None:
    f = Fleet(desired=2)
    f.step()
    f.bring_up("w1")
    f.bring_up("w2")
    f.sup.pipe_lost("w1", f.now)
    assert f.states()["w1"] is WorkerState.SUSPECT
    f.step(T.pipe_grace_s / 2)
    assert f.states()["w1"] is WorkerState.SUSPECT
    f.sup.pipe_up("w1", f.now)  # re-established in time: recovered
    assert f.states()["w1"] is WorkerState.UP
    f.sup.pipe_lost("w1", f.now)
    f.step(T.pipe_grace_s + 0.1)
    assert f.states()["w1"] is WorkerState.FAILED


def test_losing_every_pipe_at_once_holds_instead_of_mass_replacing() -> None:
    f = Fleet(desired=3)
    f.step()
    for wid in ("w1", "w2", "w3"):
        f.bring_up(wid)
    for wid in ("w1", "w2", "w3"):
        f.sup.pipe_lost(wid, f.now)
    f.step(T.pipe_grace_s + 0.1)
    assert set(f.states().values()) == {WorkerState.SUSPECT}
    assert any(e["event"] == "partition_suspected" for e in f.sup.events)
    f.step(3 * T.pipe_grace_s)  # the hold is bounded: a long silence is a real failure
    assert {f.states()[w] for w in ("w1", "w2", "w3")} == {WorkerState.FAILED}


def test_crash_loop_backs_off_exponentially_and_never_spins() -> None:
    f = Fleet(desired=1)
    spawn_times = []
    for _ in range(600):  # 60 s of a worker that dies as soon as it is spawned
        actions = f.step(0.1)
        if any(isinstance(a, Spawn) for a in actions):
            spawn_times.append(f.now)
            f.sup.process_exited(f"w{f.epoch}", 1, f.now)
    gaps = [b - a for a, b in itertools.pairwise(spawn_times)]
    assert len(spawn_times) < 15
    assert gaps[:4] == sorted(gaps[:4])
    assert max(gaps) <= T.restart_backoff_max_s + 0.2


def test_a_long_crash_loop_keeps_only_the_newest_finished_workers() -> None:
    f = Fleet(desired=2)
    f.step()
    f.bring_up("w1")
    for _ in range(3000):  # one worker dies again and again; w1 stays up throughout
        if any(isinstance(a, Spawn) for a in f.step(1.0)):
            f.sup.process_exited(f"w{f.epoch}", 1, f.now)
    assert f.epoch > 300
    dirty = f"w{f.epoch - 1}"
    f.sup.dirty = {dirty}  # the shell has stored every last state but this one
    gone = f.sup.forget_finished(keep=50)
    assert gone == [f"w{n}" for n in range(2, f.epoch - 50)]  # oldest first
    assert f.states()["w1"] is WorkerState.UP  # a live worker is never let go
    kept = sorted(f.sup.records.values(), key=lambda r: r.epoch)
    assert len(kept) == 1 + 50 + 1  # w1, the newest 50 stored, the unstored one
    assert kept[1].id == f"w{f.epoch - 50}" and dirty in f.sup.records
    assert f.sup.forget_finished(keep=50) == []
    f.sup.dirty.clear()
    assert f.sup.forget_finished(keep=50) == [f"w{f.epoch - 50}"]


def test_drain_sends_command_lowers_desired_and_exit_is_stopped_not_failed() -> None:
    f = Fleet(desired=2)
    f.step()
    f.bring_up("w1")
    f.bring_up("w2")
    assert f.sup.request_drain("w1", f.now) == [SendCommand("w1", CommandAction.DRAIN)]
    assert f.sup.desired == 1
    assert f.states()["w1"] is WorkerState.DRAINING
    f.sup.process_exited("w1", 0, f.now)
    assert f.states()["w1"] is WorkerState.STOPPED
    assert not [a for a in f.step(5) if isinstance(a, Spawn)]


def test_stop_kills_and_is_not_replaced() -> None:
    f = Fleet(desired=1)
    f.step()
    f.bring_up("w1")
    assert f.sup.request_stop("w1", f.now) == [Kill("w1", "stopped by operator")]
    f.sup.process_exited("w1", 0, f.now)
    assert f.states()["w1"] is WorkerState.STOPPED
    assert not [a for a in f.step(5) if isinstance(a, Spawn)]


def test_lowering_desired_drains_the_newest_extras() -> None:
    f = Fleet(desired=3)
    f.step()
    for wid in ("w1", "w2", "w3"):
        f.bring_up(wid)
    f.sup.set_desired(1, f.now)
    actions = f.step()
    assert SendCommand("w3", CommandAction.DRAIN) in actions
    assert SendCommand("w2", CommandAction.DRAIN) in actions
    assert f.sup.desired == 1


def test_readopted_worker_is_suspect_until_its_pipe_returns() -> None:
    sup = Supervisor(WorkerKind.BROKER, T, 1)
    rec = WorkerRecord(id="b1", kind=WorkerKind.BROKER, epoch=4, state=WorkerState.UP,
                       spawned_at=0, url="http://x", pid=7, checked_in=True)
    assert sup.adopted(rec, 10.0) == [OpenPipe("b1")]
    assert rec.state is WorkerState.SUSPECT
    assert sup.plan(10.1) == []  # still one live worker: nothing spawned twice
    sup.pipe_up("b1", 10.2)
    assert state_now(rec) is WorkerState.UP
    assert [e["event"] for e in sup.events] == ["readopted"]


def test_status_updates_load_and_worker_side_drain() -> None:
    f = Fleet(desired=1)
    f.step()
    f.bring_up("w1")
    f.sup.status("w1", StatusReport(state=WorkerState.DRAINING, load=Load(sessions=4)), f.now)
    assert f.sup.records["w1"].load.sessions == 4
    assert f.states()["w1"] is WorkerState.DRAINING
    [view] = f.sup.view(f.now)
    assert view.state is WorkerState.DRAINING and view.load.sessions == 4


def test_pipe_up_for_dead_worker_is_closed() -> None:
    f = Fleet(desired=1)
    f.step()
    f.bring_up("w1")
    f.sup.process_exited("w1", 1, f.now)
    assert f.sup.pipe_up("w1", f.now) == [ClosePipe("w1")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["exit", "lost", "up", "tick", "drain", "desired"]),
                          st.integers(0, 5), st.floats(0.05, 3.0)), max_size=60),
       st.integers(0, 4))
def test_never_more_serving_workers_than_desired(ops, desired) -> None:  # type: ignore[no-untyped-def]
    f = Fleet(desired=desired)
    for op, n, dt in ops:
        ids = sorted(f.sup.records)
        target = ids[n % len(ids)] if ids else None
        if op == "exit" and target:
            f.sup.process_exited(target, 1, f.now)
        elif op == "lost" and target:
            f.sup.pipe_lost(target, f.now)
        elif op == "up" and target and f.sup.records[target].live:
            if not f.sup.records[target].checked_in:
                f.sup.checked_in(target, "http://x", 1, f.now)
            f.sup.pipe_up(target, f.now)
        elif op == "drain" and target and f.sup.records[target].live:
            f.sup.request_drain(target, f.now)
        elif op == "desired":
            f.sup.set_desired(n % 4, f.now)
        f.step(dt)
        serving = [r for r in f.sup.records.values() if r.counts_toward_desired]
        assert len(serving) <= f.sup.desired, "plan() leaves no more serving than desired"
        epochs = [r.epoch for r in f.sup.records.values()]
        assert len(epochs) == len(set(epochs)), "every spawn has its own epoch"


def slotted(slots: list[str], desired: int = 0) -> Fleet:
    f = Fleet(desired=desired)
    f.sup.slots = slots
    return f


def test_one_worker_per_slot_each_slot_assigned_once_up() -> None:
    f = slotted(["acct-a", "acct-b"])
    f.step()
    assert len(f.sup.records) == 2  # at least one worker per slot, whatever `desired` says
    f.bring_up("w1")
    assigns = [a for a in f.step() if isinstance(a, Assign)]
    assert assigns == [Assign("w1", "acct-a")]
    f.bring_up("w2")
    assert [a for a in f.step() if isinstance(a, Assign)] == [Assign("w2", "acct-b")]
    assert [a for a in f.step() if isinstance(a, Assign)] == []


def test_failed_owner_slot_goes_to_a_standby_at_once() -> None:
    f = slotted(["acct-a"], desired=2)  # one owner, one standby
    f.step()
    f.bring_up("w1")
    f.bring_up("w2")
    f.step()
    owner = f.sup.owner_of("acct-a")
    assert owner is not None
    standby = "w2" if owner.id == "w1" else "w1"
    f.sup.process_exited(owner.id, -9, f.now)
    assigns = [a for a in f.step() if isinstance(a, Assign)]
    assert assigns == [Assign(standby, "acct-a")]  # promoted before any replacement is up


def test_reconnected_owner_gets_its_assignment_again() -> None:
    f = slotted(["acct-a"])
    f.step()
    f.bring_up("w1")
    f.step()
    f.sup.pipe_lost("w1", f.now)
    assert Assign("w1", "acct-a") in f.sup.pipe_up("w1", f.now)


def test_draining_owner_frees_its_slot() -> None:
    f = slotted(["acct-a"], desired=2)
    f.step()
    f.bring_up("w1")
    f.bring_up("w2")
    f.step()
    owner = f.sup.owner_of("acct-a")
    assert owner is not None
    f.sup.request_drain(owner.id, f.now)
    new_owner = [a for a in f.step() if isinstance(a, Assign)]
    assert len(new_owner) == 1 and new_owner[0].worker_id != owner.id


def test_a_refused_assignment_frees_the_slot_for_another_worker() -> None:
    f = slotted(["acct-a"], desired=2)
    f.step()
    f.bring_up("w1")
    f.bring_up("w2")
    [first] = [a for a in f.step() if isinstance(a, Assign)]
    f.sup.assignment_refused(first.worker_id, "journal owned by a newer epoch", f.now)
    assert f.sup.owner_of("acct-a") is None
    [second] = [a for a in f.step() if isinstance(a, Assign)]
    assert second.worker_id != first.worker_id  # the refusing worker sits out for a while
    assert any(e["event"] == "assignment_refused" for e in f.sup.events)
