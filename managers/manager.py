"""The manager shell: executes the supervisor's plan with a spawner, a registry and pipes.

A BrokerManager also keeps the fleet-wide kill switch (`set_fleet_kill_switch`), persisted in
its registry: every account assignment carries it (`{"assign": {..., "fleet_kill_switch":
{active, reason, by}}}`), so an account opened later — a new owner, the replacement of a
killed one — takes it before it accepts its first order, until an operator clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from managers.infra_link import InfraLink
from managers.pipes import ControlPipe, PipeCallbacks
from managers.registry import Registry, StoredWorker
from managers.spawner import LocalProcessSpawner, Spawner, SpawnError, SpawnSpec
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
from protocol.control import (
    LIVE_STATES,
    CommandAction,
    CommandResult,
    Hello,
    ManagerCheckin,
    PipeError,
    StatusReport,
    Welcome,
    WorkerCheckin,
    WorkerCheckinAccepted,
    WorkerEvent,
    WorkerKind,
    WorkerState,
)
from protocol.fleet import ManagerSnapshot, ManagerView
from tradefleet import __version__
from tradefleet.config import FleetConfig
from tradefleet.service.tokens import customer_tokens, new_token

log = structlog.get_logger(__name__)

TICK_S = 0.1
# Workers that exited or failed, kept in memory and in the registry for late messages and for
# history; older ones are let go (their story is in the event log and the logs).
KEEP_FINISHED = 200
SPAWN_REQUESTS_KEPT_S = 7 * 86400  # a scripted spawn retried within a week is still one spawn
FLEET_KILL_SWITCH = "fleet_kill_switch"  # registry settings key (BrokerManager)
# Keys of an event-log line that a worker event's details may not overwrite.
EVENT_KEYS = frozenset({"ts", "event", "category", "worker_id", "kind", "epoch", "n", "message",
                        "seq", "source", "location", "manager_id", "dropped_before"})


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def slots_of(kind: WorkerKind, config: FleetConfig) -> tuple[str, list[str]]:
    """What this kind's workers are assigned: accounts (broker), hosted traders (trader)."""
    if kind is WorkerKind.BROKER:
        return "account", list(config.accounts)
    if kind is WorkerKind.TRADER:
        return "trader", [t.name for t in config.traders]
    return "", []


def worker_event_record(worker_id: str, kind: WorkerKind, rec: WorkerRecord | None,
                        event: WorkerEvent) -> dict[str, Any]:
    """The event-log line of a worker's event. Detail keys that would hide a standard key
    are renamed (an exit's `kind` becomes `exit_kind`)."""
    prefix = event.event.split("_", 1)[0]
    record: dict[str, Any] = {}
    for key, value in event.detail.items():
        record[f"{prefix}_{key}" if key in EVENT_KEYS else key] = value
    record.update(ts=event.ts, event=event.event, category=event.category.value,
                  worker_id=worker_id, kind=kind.value, n=event.n, message=event.message)
    if rec is not None:
        record["epoch"] = rec.epoch
    if event.dropped:
        record["dropped_before"] = event.dropped
    return record


class CheckinError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Manager:
    """One manager of one worker kind at one location."""

    def __init__(self, kind: WorkerKind, config: FleetConfig, config_path: Path | None,
                 data_dir: Path, secrets_: dict[str, str], infra_urls: list[str]) -> None:
        self.kind = kind
        self.config = config
        self.config_path = config_path
        self.data_dir = data_dir
        self.location = config.location
        self.id = f"{self.location}-{kind.value}-manager"
        self.join_token = secrets_["join_token"]
        self.operator_token = secrets_["operator_token"]
        self.infra_urls = infra_urls
        self.registry = Registry(data_dir / "managers" / f"{kind.value}.sqlite")
        self.epoch = self.registry.bump("manager_epoch")
        desired = self.registry.get_meta("desired", getattr(config.managers, kind.value).desired)
        self.slot_key, slots = slots_of(kind, config)
        self.sup = Supervisor(kind, config.timeouts, desired, slots)
        self.url = ""
        self.spawners: dict[str, Spawner] = {}
        self.pipes: dict[str, ControlPipe] = {}
        self.docs: dict[str, dict[str, Any]] = {}
        self.subscribers: set[asyncio.Queue[ManagerSnapshot]] = set()
        self.stream_infra_ids: dict[int, str | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._last_publish = 0.0
        self._publish_soon = False
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=1000)
        self.status_listeners: list[Callable[[str], None]] = []
        self._assign_commands: dict[str, str] = {}
        self._command_waiters: dict[str, asyncio.Future[CommandResult]] = {}
        self.fleet_kill_switch: dict[str, Any] | None = (
            self.registry.get_doc(FLEET_KILL_SWITCH) if kind is WorkerKind.BROKER else None)
        self.customers_by_token = customer_tokens(
            {name: [t.get_secret_value() for t in c.api_tokens]
             for name, c in config.customers.items()}, data_dir)
        structlog.contextvars.bind_contextvars(manager_id=self.id, manager_epoch=self.epoch)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, url: str) -> None:
        self.url = url
        self._session = aiohttp.ClientSession()
        await self._readopt()
        self._own(self._loop(), "manager-loop")
        for infra in self.infra_urls:
            link = InfraLink(infra, self.join_token, self.checkin_body, self._streams_open,
                             self._session)
            self._own(link.run(), f"infra-link-{infra}")
        log.info("manager started", url=url, desired=self.sup.desired)

    async def shutdown(self, stop_workers: bool) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        for pipe in list(self.pipes.values()):
            await pipe.close()
        if stop_workers:
            live = [wid for wid, rec in self.sup.records.items() if rec.live]
            for wid in live:
                self.sup.records[wid].stopping = True
            await asyncio.gather(*(self.spawners[w].stop(grace_s=self.config.timeouts.stop_grace_s)
                                   for w in live if w in self.spawners), return_exceptions=True)
            for wid in live:
                self.sup.process_exited(wid, 0, time.time())
            self._persist_dirty()
        if self._session is not None:
            await self._session.close()
        self.registry.close()

    def _own(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("task failed", task=t.get_name(), error=repr(t.exception()))

        task.add_done_callback(done)
        return task

    async def _readopt(self) -> None:
        """Re-attach to the workers the registry says are running; spawn nothing twice."""
        now = time.time()
        for stored in self.registry.load_workers(frozenset(s.value for s in LIVE_STATES)):
            spawner = LocalProcessSpawner()
            spawner.load_state(stored.doc.get("spawner", {}))
            record = self._record_from(stored)
            self.docs[stored.id] = stored.doc
            self.spawners[stored.id] = spawner
            code = await spawner.poll()
            if code is not None:
                self.sup.records[record.id] = record
                self._execute(self.sup.process_exited(record.id, code, now))
                log.warning("worker gone while manager was down", worker_id=record.id)
                continue
            log.info("re-adopting worker", worker_id=record.id, pid=record.pid)
            self._execute(self.sup.adopted(record, now))
        self._persist_dirty()

    def _record_from(self, stored: StoredWorker) -> WorkerRecord:
        doc = stored.doc
        return WorkerRecord(id=stored.id, kind=WorkerKind(stored.kind), epoch=stored.epoch,
                            state=WorkerState(stored.state), spawned_at=doc.get("spawned_at", 0),
                            url=doc.get("url"), pid=doc.get("spawner", {}).get("pid"),
                            checked_in=bool(doc.get("checked_in")),
                            up_since=doc.get("up_since"), replaces=doc.get("replaces"),
                            slot=doc.get("slot"), slot_epoch=doc.get("slot_epoch"))

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while True:
            now = time.time()
            for wid, rec in list(self.sup.records.items()):
                if rec.live and wid in self.spawners:
                    code = await self.spawners[wid].poll()
                    if code is not None:
                        self._execute(self.sup.process_exited(wid, code, now))
            self._execute(self.sup.plan(now))
            changed = self._persist_dirty()
            self._forget_finished(now)
            if changed or self._publish_soon or \
                    now - self._last_publish >= self.config.timeouts.heartbeat_interval_s:
                self._publish(now)
            await asyncio.sleep(TICK_S)

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                self.sup.spawn_started()
                self._own(self._spawn(), "spawn")
            elif isinstance(action, OpenPipe):
                self._open_pipe(action.worker_id)
            elif isinstance(action, ClosePipe):
                pipe = self.pipes.pop(action.worker_id, None)
                if pipe is not None:
                    self._own(pipe.close(), f"close-pipe-{action.worker_id}")
            elif isinstance(action, Kill):
                spawner = self.spawners.get(action.worker_id)
                if spawner is not None:
                    log.warning("stopping worker", worker_id=action.worker_id,
                                reason=action.reason)
                    self._own(spawner.stop(grace_s=self.config.timeouts.stop_grace_s),
                              f"stop-{action.worker_id}")
            elif isinstance(action, Assign):
                self._assign(action)
            elif isinstance(action, SendCommand):
                pipe = self.pipes.get(action.worker_id)
                if pipe is not None:
                    pipe.send(action.action)

    async def _spawn(self) -> None:
        now = time.time()
        epoch = self.registry.bump("worker_epoch")
        worker_id = f"{self.kind.value}-{epoch}-{secrets.token_hex(2)}"
        spawn_token = new_token()
        record = WorkerRecord(id=worker_id, kind=self.kind, epoch=epoch,
                              state=WorkerState.STARTING, spawned_at=now)
        doc: dict[str, Any] = {"spawn_token_sha256": token_hash(spawn_token),
                               "control_token": new_token(), "spawned_at": now}
        self.docs[worker_id] = doc
        # Persist before the process exists: a crash right after start still finds it.
        self.registry.save_worker(StoredWorker(worker_id, self.kind.value, epoch,
                                               record.state.value, doc), now)
        spawner = LocalProcessSpawner()
        try:
            await spawner.start(SpawnSpec(
                worker_id=worker_id, kind=self.kind.value, epoch=epoch, manager_url=self.url,
                location=self.location, data_dir=self.data_dir, config_path=self.config_path,
                spawn_token=spawn_token,
                extra_env={"TRADEFLEET_SERVICE_TOKEN": self.join_token}))
        except SpawnError as exc:
            record.state = WorkerState.FAILED
            self.registry.save_worker(StoredWorker(worker_id, self.kind.value, epoch,
                                                   record.state.value, doc), now)
            self.sup.spawn_failed(now, str(exc))
            return
        self.spawners[worker_id] = spawner
        record.pid = spawner.get_state()["pid"]
        doc["spawner"] = spawner.get_state()
        self.sup.spawned(record, now)
        self._persist_dirty()
        log.info("spawned worker", worker_id=worker_id, epoch=epoch, pid=record.pid)

    def _assign(self, action: Assign) -> None:
        """Send a slot to its worker with a fencing epoch newer than every earlier assignment
        (a standby spawned long ago must still out-rank the slot's previous owner)."""
        rec = self.sup.records.get(action.worker_id)
        pipe = self.pipes.get(action.worker_id)
        if rec is None or pipe is None:
            return
        if rec.slot_epoch is None:
            rec.slot_epoch = self.registry.bump("worker_epoch")
            self.sup.dirty.add(rec.id)
        assign: dict[str, Any] = {self.slot_key: action.slot, "epoch": rec.slot_epoch}
        if self.fleet_kill_switch is not None:
            switch = self.fleet_kill_switch
            assign["fleet_kill_switch"] = {"active": bool(switch.get("active")),
                                           "reason": str(switch.get("reason") or ""),
                                           "by": str(switch.get("by") or "operator")}
        command_id = pipe.send(CommandAction.CONFIG, {"assign": assign})
        self._assign_commands[command_id] = rec.id

    async def command(self, worker_id: str, params: dict[str, Any],
                      timeout_s: float = 10.0) -> CommandResult:
        """Send `config` `params` to a worker over its pipe and wait for its result. Raises
        `KeyError` if the worker has no pipe, `TimeoutError` without an answer in time."""
        pipe = self.pipes[worker_id]
        command_id = pipe.send(CommandAction.CONFIG, params)
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._command_waiters[command_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._command_waiters.pop(command_id, None)

    def _pipe_result(self, worker_id: str, result: CommandResult) -> None:
        waiter = self._command_waiters.get(result.command_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
        if self._assign_commands.pop(result.command_id, None) is not None and not result.ok:
            self.sup.assignment_refused(worker_id, result.error or "refused", time.time())

    def _open_pipe(self, worker_id: str) -> None:
        if worker_id in self.pipes or self._session is None:
            return
        rec = self.sup.records[worker_id]
        doc = self.docs[worker_id]
        if rec.url is None:
            return
        callbacks = PipeCallbacks(on_up=self._pipe_up, on_lost=self._pipe_lost,
                                  on_status=self._pipe_status, on_heartbeat=self._pipe_heartbeat,
                                  on_refused=self._pipe_refused,
                                  on_result=self._pipe_result, on_event=self._pipe_event)
        hello = Hello(manager_id=self.id, manager_epoch=self.epoch, worker_epoch=rec.epoch)
        pipe = ControlPipe(worker_id, rec.url, doc["control_token"], hello,
                           self.config.timeouts.heartbeat_interval_s, self._session, callbacks)
        self.pipes[worker_id] = pipe
        pipe.start()

    # ------------------------------------------------------------------ pipe callbacks

    def _pipe_up(self, worker_id: str, welcome: Welcome) -> None:
        self._execute(self.sup.pipe_up(worker_id, time.time()))

    def _pipe_lost(self, worker_id: str) -> None:
        self.sup.pipe_lost(worker_id, time.time())

    def _pipe_status(self, worker_id: str, report: StatusReport) -> None:
        self.sup.status(worker_id, report, time.time())
        for listener in self.status_listeners:
            listener(worker_id)

    def _pipe_heartbeat(self, worker_id: str) -> None:
        self.sup.heartbeat(worker_id, time.time())

    def _pipe_event(self, worker_id: str, event: WorkerEvent) -> None:
        """A worker's operator event (risk refusal, venue resync...): into the event log, and
        out to the infra managers with the next snapshot (sent within one tick)."""
        self.sup.events.append(worker_event_record(worker_id, self.kind,
                                                   self.sup.records.get(worker_id), event))
        self._publish_soon = True

    def _pipe_refused(self, worker_id: str, error: PipeError) -> None:
        log.error("worker refused our pipe", worker_id=worker_id, code=error.code,
                  message=error.message)

    # ------------------------------------------------------------------ check-in (REST)

    def accept_checkin(self, body: WorkerCheckin) -> WorkerCheckinAccepted:
        """Validate a worker's check-in against the registry. Raises `CheckinError`."""
        rec = self.sup.records.get(body.worker_id)
        doc = self.docs.get(body.worker_id)
        if rec is None or doc is None or rec.epoch != body.epoch or body.kind is not self.kind:
            raise CheckinError(404, f"unknown worker {body.worker_id} epoch {body.epoch}")
        if token_hash(body.spawn_token) != doc.get("spawn_token_sha256"):
            raise CheckinError(401, "invalid spawn token")
        if not rec.live:
            raise CheckinError(409, f"worker {body.worker_id} is {rec.state.value}")
        if rec.checked_in and (rec.url != body.url or rec.pid != body.pid):
            raise CheckinError(409, "spawn token already used")
        if not rec.checked_in:
            doc.update(url=body.url, checked_in=True)
            self._execute(self.sup.checked_in(body.worker_id, body.url, body.pid, time.time()))
            self._persist_dirty()
        return WorkerCheckinAccepted(worker_id=body.worker_id,
                                     control_token=doc["control_token"],
                                     manager_epoch=self.epoch)

    def checkin_body(self) -> ManagerCheckin:
        return ManagerCheckin(manager_id=self.id, location=self.location, kind=self.kind,
                              url=self.url, epoch=self.epoch, version=__version__)

    # ------------------------------------------------------------------ operator requests

    async def spawn(self, count: int, request_id: str) -> list[str]:
        """Raise desired by `count`; idempotent per `request_id`. Returns the new worker ids."""
        previous = self.registry.spawn_request(request_id)
        if previous is not None:
            return previous
        before = set(self.sup.records)
        self.sup.set_desired(self.sup.desired + count, time.time())
        self.registry.set_meta("desired", self.sup.desired)
        for action in self.sup.plan(time.time()):
            if isinstance(action, Spawn):
                self.sup.spawn_started()
                await self._spawn()
            else:
                self._execute([action])
        new_ids = [w for w in self.sup.records if w not in before]
        self.registry.record_spawn_request(request_id, new_ids, time.time())
        self._publish(time.time())
        return new_ids

    def set_fleet_kill_switch(self, active: bool, reason: str, by: str) -> dict[str, Any]:
        """Persist the fleet-wide kill switch (before any owner is told), so every account
        assigned from now on inherits it. Returns the stored state."""
        at = time.time()
        state = {"active": active, "reason": reason, "by": by, "at": at}
        self.registry.set_doc(FLEET_KILL_SWITCH, state)
        self.fleet_kill_switch = state
        verb = "engaged" if active else "cleared"
        message = f"fleet-wide kill switch {verb} by {by}" + (f": {reason}" if reason else "")
        self.sup.events.append({"ts": at, "event": "fleet_kill_switch",
                                "category": "risk", "kind": self.kind.value, "active": active,
                                "reason": reason, "by": by, "message": message})
        self._publish(at)  # in the event log before the operator's answer
        log.warning("fleet_kill_switch", active=active, reason=reason, by=by)
        return state

    def set_desired(self, desired: int) -> None:
        self.sup.set_desired(desired, time.time())
        self.registry.set_meta("desired", desired)

    def drain(self, worker_id: str) -> None:
        self._execute(self.sup.request_drain(worker_id, time.time()))
        self.registry.set_meta("desired", self.sup.desired)
        self._persist_dirty()

    def stop(self, worker_id: str) -> None:
        self._execute(self.sup.request_stop(worker_id, time.time()))
        self.registry.set_meta("desired", self.sup.desired)
        self._persist_dirty()

    # ------------------------------------------------------------------ views & stream

    def view(self) -> ManagerView:
        info: dict[str, Any] = {}
        if self.fleet_kill_switch is not None:
            info[FLEET_KILL_SWITCH] = self.fleet_kill_switch
        return ManagerView(id=self.id, kind=self.kind, location=self.location, url=self.url,
                           epoch=self.epoch, desired=self.sup.desired,
                           workers=self.sup.view(time.time()), info=info)

    def _publish(self, now: float) -> None:
        self._last_publish = now
        self._publish_soon = False
        events, self.sup.events = self.sup.events, []
        self.recent_events.extend(events)
        for event in events:
            log.info("worker_event" if "category" in event else "lifecycle",
                     lifecycle=event["event"],
                     **{k: v for k, v in event.items() if k not in ("ts", "event")})
        snapshot = ManagerSnapshot(manager=self.view(), events=events)
        for queue in list(self.subscribers):
            if queue.qsize() > 100:  # a stuck reader gets the newest state, not a backlog
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        queue.get_nowait()
            queue.put_nowait(snapshot)

    def _streams_open(self, infra_id: str | None) -> bool:
        ids = [i for i in self.stream_infra_ids.values()]
        if infra_id is not None and infra_id in ids:
            return True
        # Infra managers that do not announce their id: count anonymous join-token streams.
        return ids.count(None) >= len(self.infra_urls) and bool(ids)

    def _forget_finished(self, now: float) -> None:
        gone = self.sup.forget_finished(KEEP_FINISHED)
        if not gone:
            return
        for worker_id in gone:
            self.docs.pop(worker_id, None)
            self.spawners.pop(worker_id, None)
        self.registry.forget_finished(KEEP_FINISHED, now - SPAWN_REQUESTS_KEPT_S)

    def _persist_dirty(self) -> bool:
        if not self.sup.dirty:
            return False
        now = time.time()
        for wid in self.sup.dirty:
            rec = self.sup.records.get(wid)
            if rec is None:
                continue
            doc = self.docs.setdefault(wid, {})
            doc.update(url=rec.url, checked_in=rec.checked_in, up_since=rec.up_since,
                       replaces=rec.replaces, spawned_at=rec.spawned_at, slot=rec.slot,
                       slot_epoch=rec.slot_epoch)
            if wid in self.spawners:
                doc["spawner"] = self.spawners[wid].get_state()
            self.registry.save_worker(StoredWorker(wid, rec.kind.value, rec.epoch,
                                                   rec.state.value, doc), now)
        self.sup.dirty.clear()
        self.registry.set_meta("desired", self.sup.desired)
        return True
