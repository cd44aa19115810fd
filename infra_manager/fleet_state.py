"""The fleet as one infrastructure manager sees it: pure aggregation of manager snapshots.

No sockets and no asyncio here. The async shell feeds `FleetState` with check-ins, status-pipe
snapshots and the passage of time (`tick`), and reads back the `FleetView`, the event log and
where to send an operator command.

Rules (DESIGN.md §2, issue 2 item 5):

* A manager is *silent* when nothing has been heard from it (no accepted snapshot, and no
  check-in that (re)started its link) for `silence_timeout_s`.
* The workers of a silent manager that were last seen alive are shown `unreachable`: the infra
  manager cannot know their fate. Workers already `failed` or `stopped` keep that state.
* A location whose managers are all silent is `unreachable`; some silent is `degraded`.
* The infra manager never replaces anything itself; it only reports.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra_manager.clock import Clock
from protocol.control import LIVE_STATES, ManagerCheckin, WorkerKind, WorkerState
from protocol.fleet import (
    FleetView,
    LocationState,
    LocationView,
    ManagerSnapshot,
    ManagerState,
    ManagerView,
    WorkerView,
)

KIND_ORDER = {WorkerKind.BROKER: 0, WorkerKind.MARKET: 1, WorkerKind.TRADER: 2}
DEDUP_WINDOW = 512


class InfraError(Exception):
    """Root of the infrastructure manager's own exceptions."""


class StaleCheckin(InfraError):
    """A check-in from an older generation than the one already known: a zombie; refuse it."""

    def __init__(self, manager_id: str, given: int, known: int) -> None:
        super().__init__(f"manager {manager_id} checked in with epoch {given}, "
                         f"but epoch {known} is already known")
        self.manager_id = manager_id
        self.given = given
        self.known = known


class CheckinOutcome(enum.StrEnum):
    NEW = "new"  # first time this manager id is seen: open a status pipe
    RENEWED = "renewed"  # same generation checking in again: make sure the pipe is open
    REPLACED = "replaced"  # a new generation (restart) or new address: replace the pipe


class SnapshotOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    UNKNOWN_MANAGER = "unknown_manager"  # no check-in for it (or it was replaced meanwhile)
    STALE = "stale"  # from a link or generation older than the current one
    MISMATCH = "mismatch"  # the frame describes another manager than the pipe's


@dataclass(frozen=True)
class ManagerLink:
    """Where a checked-in manager lives. The shell keeps one status pipe per link."""

    manager_id: str
    location: str
    kind: WorkerKind
    url: str
    epoch: int


@dataclass
class _Entry:
    checkin: ManagerCheckin
    last_heard: float
    view: ManagerView | None = None
    snapshot_at: float | None = None
    silent: bool = False
    seen_events: deque[tuple[Any, ...]] = field(default_factory=lambda: deque(maxlen=DEDUP_WINDOW))

    @property
    def link(self) -> ManagerLink:
        c = self.checkin
        return ManagerLink(c.manager_id, c.location, c.kind, c.url, c.epoch)


class FleetState:
    """Aggregates every checked-in manager into one `FleetView`.

    Every mutating method returns whether anything visible changed, so the shell knows when to
    push a new view to operators. `version` grows with every such change.
    """

    def __init__(self, infra_id: str, silence_timeout_s: float, clock: Clock,
                 event_log_size: int = 2000) -> None:
        if silence_timeout_s <= 0:
            raise ValueError("silence_timeout_s must be positive")
        self.infra_id = infra_id
        self.silence_timeout_s = silence_timeout_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._location_states: dict[str, LocationState] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=event_log_size)
        self._event_seq = 0
        self.version = 0

    # ------------------------------------------------------------------ inputs

    def check_in(self, checkin: ManagerCheckin) -> CheckinOutcome:
        """Register a manager's check-in. Raises `StaleCheckin` for an older generation.

        A repeated check-in of the same generation and address does not count as being heard
        (only status frames do): a manager that can reach us but that we cannot reach still
        goes silent.
        """
        now = self._clock.monotonic()
        known = self._entries.get(checkin.manager_id)
        if known is not None and checkin.epoch < known.checkin.epoch:
            raise StaleCheckin(checkin.manager_id, checkin.epoch, known.checkin.epoch)
        if known is not None and known.checkin == checkin:
            return CheckinOutcome.RENEWED
        outcome = CheckinOutcome.NEW if known is None else CheckinOutcome.REPLACED
        self._entries[checkin.manager_id] = _Entry(checkin=checkin, last_heard=now)
        self._log_infra("manager_checked_in" if known is None else "manager_replaced",
                        checkin.location, checkin.kind, checkin.manager_id,
                        epoch=checkin.epoch, url=checkin.url)
        self._refresh(now)
        self._bump()
        return outcome

    def apply(self, link: ManagerLink, snapshot: ManagerSnapshot) -> SnapshotOutcome:
        """Take one status-pipe frame received over `link`."""
        now = self._clock.monotonic()
        entry = self._entries.get(link.manager_id)
        if entry is None:
            return SnapshotOutcome.UNKNOWN_MANAGER
        if entry.link != link:
            return SnapshotOutcome.STALE
        view = snapshot.manager
        if view.id != link.manager_id:
            return SnapshotOutcome.MISMATCH
        if view.epoch < link.epoch:
            return SnapshotOutcome.STALE
        entry.view = view
        entry.last_heard = now
        entry.snapshot_at = now
        for event in snapshot.events:
            self._log_manager_event(entry, event)
        self._refresh(now)
        self._bump()
        return SnapshotOutcome.ACCEPTED

    def tick(self) -> bool:
        """Let time pass: mark managers silent and locations unreachable as timeouts expire."""
        changed = self._refresh(self._clock.monotonic())
        if changed:
            self._bump()
        return changed

    def record_operator_action(self, action: str, **details: Any) -> None:
        """Append an operator command (and its outcome) to the event log."""
        self._append({"event": "operator", "action": action, "source": "infra", **details})
        self._bump()

    # ------------------------------------------------------------------ outputs

    def view(self) -> FleetView:
        """The fleet now: locations by name, managers by kind then id, workers by epoch then id
        (spawn order)."""
        now = self._clock.monotonic()
        by_location: dict[str, list[_Entry]] = {}
        for entry in self._entries.values():
            by_location.setdefault(entry.checkin.location, []).append(entry)
        locations = []
        for name in sorted(by_location):
            entries = sorted(by_location[name],
                             key=lambda e: (KIND_ORDER[e.checkin.kind], e.checkin.manager_id))
            managers = [self._manager_view(e, now) for e in entries]
            counts = {state.value: 0 for state in WorkerState}
            for manager in managers:
                for worker in manager.workers:
                    counts[worker.state.value] += 1
            locations.append(LocationView(name=name, state=self._location_state(entries, now),
                                          managers=managers, counts=counts))
        return FleetView(infra_id=self.infra_id, generated_at=self._clock.wall(),
                         locations=locations)

    def links(self) -> list[ManagerLink]:
        return [entry.link for entry in self._entries.values()]

    def link(self, manager_id: str) -> ManagerLink | None:
        entry = self._entries.get(manager_id)
        return None if entry is None else entry.link

    def has_location(self, location: str) -> bool:
        return any(e.checkin.location == location for e in self._entries.values())

    def manager_for(self, location: str, kind: WorkerKind) -> ManagerLink | None:
        """The manager to command for `kind` at `location`: one that is heard, newest first."""
        now = self._clock.monotonic()
        candidates = [e for e in self._entries.values()
                      if e.checkin.location == location and e.checkin.kind == kind]
        return self._best(candidates, now)

    def owner_of(self, worker_id: str) -> ManagerLink | None:
        """The manager whose last snapshot lists `worker_id`, or None."""
        now = self._clock.monotonic()
        candidates = [e for e in self._entries.values()
                      if e.view is not None and any(w.id == worker_id for w in e.view.workers)]
        return self._best(candidates, now)

    @property
    def last_event_seq(self) -> int:
        return self._event_seq

    def events_since(self, seq: int, limit: int = 500) -> list[dict[str, Any]]:
        """Events with a sequence number above `seq`, oldest first, at most the newest `limit`."""
        newer = [e for e in self._events if e["seq"] > seq]
        return newer[-limit:]

    # ------------------------------------------------------------------ internals

    def _is_silent(self, entry: _Entry, now: float) -> bool:
        return now - entry.last_heard >= self.silence_timeout_s

    def _best(self, entries: Iterable[_Entry], now: float) -> ManagerLink | None:
        ranked = sorted(entries, key=lambda e: (self._is_silent(e, now), -e.checkin.epoch,
                                                e.checkin.manager_id))
        return ranked[0].link if ranked else None

    def _location_state(self, entries: list[_Entry], now: float) -> LocationState:
        silent = sum(1 for e in entries if self._is_silent(e, now))
        if silent == 0:
            return LocationState.OK
        return LocationState.UNREACHABLE if silent == len(entries) else LocationState.DEGRADED

    def _manager_view(self, entry: _Entry, now: float) -> ManagerView:
        silent = self._is_silent(entry, now)
        c = entry.checkin
        update: dict[str, Any] = {
            "id": c.manager_id, "kind": c.kind, "location": c.location, "url": c.url,
            "state": ManagerState.SILENT if silent else ManagerState.UP,
            "last_seen_age_s": round(now - entry.last_heard, 3),
        }
        if entry.view is None or entry.snapshot_at is None:
            return ManagerView(epoch=c.epoch, desired=0, **update)
        elapsed = now - entry.snapshot_at
        update["workers"] = sorted((_age_worker(w, elapsed, silent) for w in entry.view.workers),
                                   key=lambda w: (w.epoch, w.id))
        return entry.view.model_copy(update=update)

    def _refresh(self, now: float) -> bool:
        """Recompute silence and location states; log every transition. True if any changed."""
        changed = False
        for entry in self._entries.values():
            silent = self._is_silent(entry, now)
            if silent != entry.silent:
                entry.silent = silent
                changed = True
                c = entry.checkin
                self._log_infra("manager_silent" if silent else "manager_heard", c.location,
                                c.kind, c.manager_id,
                                last_seen_age_s=round(now - entry.last_heard, 3))
        by_location: dict[str, list[_Entry]] = {}
        for entry in self._entries.values():
            by_location.setdefault(entry.checkin.location, []).append(entry)
        for name, entries in by_location.items():
            state = self._location_state(entries, now)
            previous = self._location_states.get(name)
            if state != previous:
                self._location_states[name] = state
                changed = True
                if previous is not None or state != LocationState.OK:
                    self._append({"event": f"location_{state.value}", "location": name,
                                  "source": "infra"})
        return changed

    def _log_infra(self, event: str, location: str, kind: WorkerKind, manager_id: str,
                   **details: Any) -> None:
        self._append({"event": event, "location": location, "kind": kind.value,
                      "manager_id": manager_id, "source": "infra", **details})

    def _log_manager_event(self, entry: _Entry, event: Mapping[str, Any]) -> None:
        # A manager may resend recent events after its stream is re-opened: log each once.
        key = (event.get("ts"), event.get("event"), event.get("worker_id"), event.get("epoch"),
               event.get("n"))
        if key in entry.seen_events:
            return
        entry.seen_events.append(key)
        c = entry.checkin
        record = {k: v for k, v in event.items() if k not in ("seq", "source")}
        record.update(location=c.location, kind=c.kind.value, manager_id=c.manager_id,
                      source="manager")
        self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        self._event_seq += 1
        record["seq"] = self._event_seq
        if not isinstance(record.get("ts"), (int, float)):
            record["ts"] = self._clock.wall()
        self._events.append(record)

    def _bump(self) -> None:
        self.version += 1


def _age_worker(worker: WorkerView, elapsed: float, manager_silent: bool) -> WorkerView:
    update: dict[str, Any] = {}
    if worker.last_heartbeat_age_s is not None:
        update["last_heartbeat_age_s"] = round(worker.last_heartbeat_age_s + elapsed, 3)
    if manager_silent and worker.state in LIVE_STATES:
        update["state"] = WorkerState.UNREACHABLE
    return worker.model_copy(update=update) if update else worker
