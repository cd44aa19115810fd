"""The manager's brain, as pure code: worker lifecycle, replacement, scaling and crash-loop backoff.

The shell feeds it facts (spawned, checked in, pipe up/lost, status, process exited, operator
requests) with the current time, and executes the actions `plan()` returns. No I/O, no clock.

Rules:
- A worker spawned but not up within `spawn_ready_timeout_s` is failed.
- A lost pipe makes a worker *suspect*; one whose pipe stays down for `pipe_grace_s` is failed;
  one whose process is gone is failed at once. Failed workers are killed and replaced so the
  count of live, non-draining workers meets `desired`.
- If every live worker loses its pipe at once while the processes still run, that looks like a
  partition of the manager, not a fleet-wide crash: replacements are held for up to three grace
  periods instead of mass-replacing.
- Consecutive failures back off exponentially (crash loops never spin); the streak resets after
  a worker has stayed up for `stable_after_s`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.control import LIVE_STATES, CommandAction, Load, StatusReport, WorkerKind, WorkerState
from protocol.fleet import WorkerView
from tradefleet.config import Timeouts

STABLE_AFTER_S = 10.0


@dataclass
class WorkerRecord:
    id: str
    kind: WorkerKind
    epoch: int
    state: WorkerState
    spawned_at: float
    url: str | None = None
    pid: int | None = None
    checked_in: bool = False
    pipe_up: bool = False
    pipe_lost_at: float | None = None
    up_since: float | None = None
    last_heartbeat: float | None = None
    load: Load = field(default_factory=Load)
    info: dict[str, Any] = field(default_factory=dict)
    replaces: str | None = None
    draining_since: float | None = None
    stopping: bool = False
    adopted: bool = False
    slot: str | None = None  # the account / trader this worker serves, if any
    slot_epoch: int | None = None  # fencing epoch of the current assignment (set by the shell)
    refused_until: float = 0.0  # an assignment was refused: not eligible again before this

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def counts_toward_desired(self) -> bool:
        return self.live and self.state is not WorkerState.DRAINING and not self.stopping


@dataclass(frozen=True)
class Spawn:
    replaces: str | None = None


@dataclass(frozen=True)
class OpenPipe:
    worker_id: str


@dataclass(frozen=True)
class Kill:
    worker_id: str
    reason: str


@dataclass(frozen=True)
class SendCommand:
    worker_id: str
    action: CommandAction


@dataclass(frozen=True)
class ClosePipe:
    worker_id: str


@dataclass(frozen=True)
class Assign:
    """Give `slot` (an account, a hosted trader) to a worker over its control pipe."""

    worker_id: str
    slot: str


Action = Spawn | OpenPipe | Kill | SendCommand | ClosePipe | Assign


class Supervisor:
    def __init__(self, kind: WorkerKind, timeouts: Timeouts, desired: int,
                 slots: list[str] | None = None) -> None:
        self.kind = kind
        self.t = timeouts
        self.desired = desired
        self.slots = list(slots or [])
        self.records: dict[str, WorkerRecord] = {}
        self.events: list[dict[str, Any]] = []
        self.dirty: set[str] = set()
        self.failure_streak = 0
        self.next_spawn_at = 0.0
        self._awaiting_replacement: list[str] = []
        self._in_flight_spawns = 0
        self._holding_since: float | None = None

    # ------------------------------------------------------------------ facts

    def spawn_started(self) -> None:
        """The shell is about to create a worker for a `Spawn` action."""
        self._in_flight_spawns += 1

    def spawned(self, record: WorkerRecord, now: float) -> None:
        self._in_flight_spawns = max(0, self._in_flight_spawns - 1)
        self.records[record.id] = record
        if self._awaiting_replacement:
            record.replaces = self._awaiting_replacement.pop(0)
        self._event(now, "spawned", record, replaces=record.replaces)
        if record.replaces:
            self._event(now, "replaced", record, old_worker_id=record.replaces)
        self.dirty.add(record.id)

    def spawn_failed(self, now: float, reason: str) -> None:
        self._in_flight_spawns = max(0, self._in_flight_spawns - 1)
        self._note_failure(now)
        self.events.append({"ts": now, "event": "spawn_failed", "kind": self.kind.value,
                            "reason": reason})

    def adopted(self, record: WorkerRecord, now: float) -> list[Action]:
        """A worker from the registry whose process still runs: re-open its pipe."""
        record.adopted = True
        if record.state is not WorkerState.DRAINING and record.checked_in:
            record.state = WorkerState.SUSPECT
        record.pipe_up = False
        record.pipe_lost_at = now
        self.records[record.id] = record
        self.dirty.add(record.id)
        return [OpenPipe(record.id)] if record.checked_in else []

    def checked_in(self, worker_id: str, url: str, pid: int, now: float) -> list[Action]:
        rec = self.records[worker_id]
        rec.url, rec.pid, rec.checked_in = url, pid, True
        self._event(now, "checked_in", rec, url=url, pid=pid)
        self.dirty.add(worker_id)
        return [OpenPipe(worker_id)]

    def pipe_up(self, worker_id: str, now: float) -> list[Action]:
        rec = self.records.get(worker_id)
        if rec is None or not rec.live:
            return [ClosePipe(worker_id)]
        rec.pipe_up, rec.pipe_lost_at, rec.last_heartbeat = True, None, now
        actions: list[Action] = []
        if rec.state is WorkerState.DRAINING:
            actions.append(SendCommand(worker_id, CommandAction.DRAIN))
        else:
            if rec.adopted:
                self._event(now, "readopted", rec)
            elif rec.state is WorkerState.SUSPECT:
                self._event(now, "recovered", rec)
            rec.state = WorkerState.UP
            rec.up_since = rec.up_since or now
            if rec.slot is not None:
                actions.append(Assign(worker_id, rec.slot))  # idempotent at the worker
        rec.adopted = False
        self.dirty.add(worker_id)
        return actions

    def heartbeat(self, worker_id: str, now: float) -> None:
        rec = self.records.get(worker_id)
        if rec is not None:
            rec.last_heartbeat = now

    def status(self, worker_id: str, report: StatusReport, now: float) -> None:
        rec = self.records.get(worker_id)
        if rec is None:
            return
        rec.last_heartbeat, rec.load, rec.info = now, report.load, report.info
        if report.state is WorkerState.DRAINING and rec.state is not WorkerState.DRAINING:
            rec.state, rec.draining_since = WorkerState.DRAINING, now
            self._event(now, "draining", rec)
            self.dirty.add(worker_id)

    def pipe_lost(self, worker_id: str, now: float) -> None:
        rec = self.records.get(worker_id)
        if rec is None or not rec.pipe_up:
            return
        rec.pipe_up, rec.pipe_lost_at = False, now
        if rec.state is WorkerState.UP:
            rec.state = WorkerState.SUSPECT
            self._event(now, "suspect", rec, reason="control pipe lost")
        self.dirty.add(worker_id)

    def process_exited(self, worker_id: str, code: int, now: float) -> list[Action]:
        rec = self.records.get(worker_id)
        if rec is None or not rec.live:
            return []
        if rec.stopping or rec.state is WorkerState.DRAINING:
            rec.state = WorkerState.STOPPED
            self._event(now, "stopped", rec, exit_code=code)
            self.dirty.add(worker_id)
            return [ClosePipe(worker_id)]
        return self._fail(rec, now, f"process exited with code {code}")

    # ------------------------------------------------------------------ operator requests

    def request_drain(self, worker_id: str, now: float) -> list[Action]:
        rec = self._live(worker_id)
        if rec.state is WorkerState.DRAINING:
            return []
        rec.state, rec.draining_since = WorkerState.DRAINING, now
        self.desired = max(0, self.desired - 1)
        self._event(now, "draining", rec, requested=True)
        self.dirty.add(worker_id)
        return [SendCommand(worker_id, CommandAction.DRAIN)] if rec.pipe_up else []

    def request_stop(self, worker_id: str, now: float) -> list[Action]:
        rec = self._live(worker_id)
        if rec.stopping:
            return []
        if rec.counts_toward_desired:
            self.desired = max(0, self.desired - 1)
        rec.stopping = True
        self._event(now, "stopping", rec, requested=True)
        self.dirty.add(worker_id)
        return [Kill(worker_id, "stopped by operator")]

    def assignment_refused(self, worker_id: str, reason: str, now: float) -> None:
        """The worker refused its slot: free the slot for another worker, and keep this one
        out of assignments for a while (it may be fenced, misconfigured or still busy)."""
        rec = self.records.get(worker_id)
        if rec is None or rec.slot is None:
            return
        self._event(now, "assignment_refused", rec, slot=rec.slot, reason=reason)
        rec.slot, rec.slot_epoch = None, None
        rec.refused_until = now + max(5.0, self.t.pipe_grace_s)
        self.dirty.add(worker_id)

    def set_desired(self, desired: int, now: float) -> None:
        self.desired = desired
        self.events.append({"ts": now, "event": "desired", "kind": self.kind.value,
                            "desired": desired})

    # ------------------------------------------------------------------ planning

    def plan(self, now: float) -> list[Action]:
        """What to do now: fail the timed-out, replace the failed, scale to `desired`."""
        actions: list[Action] = []
        live = [r for r in self.records.values() if r.live]
        for rec in live:
            if rec.state is WorkerState.STARTING and not rec.pipe_up and \
                    now - rec.spawned_at >= self.t.spawn_ready_timeout_s and not rec.adopted:
                actions += self._fail(rec, now, "did not check in and open its pipe in time "
                                                "(raise timeouts.spawn_ready_timeout_s if slow)")
            elif rec.state is WorkerState.DRAINING and rec.draining_since is not None and \
                    now - rec.draining_since >= self.t.drain_timeout_s + 3 * self.t.stop_grace_s \
                    and not rec.stopping:
                rec.stopping = True
                actions.append(Kill(rec.id, "drain did not finish in time"))
        actions += self._fail_silent(now)
        self._maybe_reset_streak(now)
        actions += self._assign_free_slots(now)
        serving = [r for r in self.records.values() if r.counts_toward_desired]
        missing = self.target - len(serving) - self._in_flight_spawns
        if missing > 0 and now >= self.next_spawn_at:
            # One at a time while backing off, all at once when healthy.
            batch = 1 if self.failure_streak else missing
            actions += [Spawn() for _ in range(batch)]
        elif missing < 0:
            # Standbys go first; slot owners only when there are more workers than slots.
            extras = sorted(serving, key=lambda r: (r.slot is None, r.epoch),
                            reverse=True)[: -missing]
            for rec in extras:
                actions += self.request_drain(rec.id, now)
                self.desired += 1  # request_drain lowered it; desired was already set
        return actions

    @property
    def target(self) -> int:
        """Workers to keep serving: the desired count, and at least one per slot."""
        return max(self.desired, len(self.slots))

    def owner_of(self, slot: str) -> WorkerRecord | None:
        for rec in self.records.values():
            if rec.slot == slot and rec.counts_toward_desired:
                return rec
        return None

    def _assign_free_slots(self, now: float) -> list[Action]:
        free = [s for s in self.slots if self.owner_of(s) is None]
        if not free:
            return []
        standbys = sorted((r for r in self.records.values()
                           if r.state is WorkerState.UP and r.pipe_up and r.slot is None
                           and r.counts_toward_desired and now >= r.refused_until),
                          key=lambda r: r.epoch, reverse=True)  # the newest first
        actions: list[Action] = []
        for slot, rec in zip(free, standbys, strict=False):
            rec.slot, rec.slot_epoch = slot, None
            self._event(now, "assigned", rec, slot=slot)
            self.dirty.add(rec.id)
            actions.append(Assign(rec.id, slot))
        return actions

    def _fail_silent(self, now: float) -> list[Action]:
        suspects = [r for r in self.records.values()
                    if r.live and not r.pipe_up and r.checked_in and r.pipe_lost_at is not None
                    and r.state in (WorkerState.SUSPECT, WorkerState.UP, WorkerState.DRAINING)]
        overdue = [r for r in suspects if now - (r.pipe_lost_at or now) >= self.t.pipe_grace_s]
        if not overdue:
            self._holding_since = None
            return []
        serving = [r for r in self.records.values() if r.live and r.checked_in]
        mass_loss = len(serving) >= 2 and len(suspects) == len(serving)
        if mass_loss:
            if self._holding_since is None:
                self._holding_since = now
                self.events.append({"ts": now, "event": "partition_suspected",
                                    "kind": self.kind.value, "workers": len(suspects)})
            if now - self._holding_since < 3 * self.t.pipe_grace_s:
                return []
        actions: list[Action] = []
        for rec in overdue:
            actions += self._fail(rec, now, f"control pipe down for {self.t.pipe_grace_s}s")
        return actions

    def _fail(self, rec: WorkerRecord, now: float, reason: str) -> list[Action]:
        was_serving = rec.counts_toward_desired
        rec.state = WorkerState.FAILED
        rec.pipe_up = False
        self._event(now, "failed", rec, reason=reason)
        self.dirty.add(rec.id)
        self._note_failure(now)
        if was_serving:
            self._awaiting_replacement.append(rec.id)
        return [ClosePipe(rec.id), Kill(rec.id, reason)]

    def _note_failure(self, now: float) -> None:
        """The first failure of a streak is replaced at once (a Broker's accounts are out of
        reach until then); from the second in a row, the crash-loop backoff applies."""
        self.failure_streak += 1
        if self.failure_streak == 1:
            self.next_spawn_at = now
            return
        delay = min(self.t.restart_backoff_max_s,
                    self.t.restart_backoff_initial_s * 2 ** (self.failure_streak - 2))
        self.next_spawn_at = now + delay

    def _maybe_reset_streak(self, now: float) -> None:
        if self.failure_streak and any(
                r.state is WorkerState.UP and r.up_since is not None
                and now - r.up_since >= STABLE_AFTER_S and now >= self.next_spawn_at
                for r in self.records.values()):
            self.failure_streak = 0

    def forget_finished(self, keep: int) -> list[str]:
        """Let go of all but the newest `keep` workers that have exited or failed, once their
        last state is stored (not dirty); returns the ids let go. A manager that replaces
        workers for months would otherwise carry, and plan over, every worker it ever had."""
        dead = [r for r in self.records.values() if not r.live and r.id not in self.dirty]
        if len(dead) <= keep:  # every planning tick: no sort until there is something to do
            return []
        dead.sort(key=lambda r: r.epoch)
        gone = [r.id for r in dead[:len(dead) - keep]]
        for worker_id in gone:
            del self.records[worker_id]
        return gone

    # ------------------------------------------------------------------ views

    def _live(self, worker_id: str) -> WorkerRecord:
        rec = self.records.get(worker_id)
        if rec is None or not rec.live:
            raise KeyError(worker_id)
        return rec

    def _event(self, now: float, name: str, rec: WorkerRecord, **detail: Any) -> None:
        self.events.append({"ts": now, "event": name, "worker_id": rec.id,
                            "kind": rec.kind.value, "epoch": rec.epoch,
                            **{k: v for k, v in detail.items() if v is not None}})

    def view(self, now: float) -> list[WorkerView]:
        return [WorkerView(
            id=r.id, kind=r.kind, state=r.state, pid=r.pid, epoch=r.epoch, url=r.url,
            load=r.load, info={**r.info, **({"slot": r.slot} if r.slot else {})},
            last_heartbeat_age_s=None if r.last_heartbeat is None
            else round(max(0.0, now - r.last_heartbeat), 3),
            uptime_s=None if r.up_since is None else round(now - r.up_since, 3))
            for r in sorted(self.records.values(), key=lambda r: r.epoch) if r.live]
