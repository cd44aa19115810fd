"""The Broker worker: one account's order owner, serving Market workers over `WS /v1/link`.

A Broker worker starts as a standby. Its manager assigns it an account over the control pipe
(`config {"assign": {"account": A}}`); the worker then claims the account's journal
(`DATA_DIR/journal/<A>.sqlite`) with its epoch, rebuilds the books, connects the venue,
reconciles, and only then accepts links (`workers.broker.owner`). The account is reported in
the status `info` for the BrokerManager's `GET /v1/accounts` and `tradefleet status`.

Links (`protocol.link`): a Market authenticates with the deployment service token
(`TRADEFLEET_SERVICE_TOKEN`), sends `link_hello`, gets `link_welcome`, then routes its algo
sessions' requests. A session's requests are carried out in order, but sessions do not wait
for each other's venue calls (`workers.broker.lanes`). Each session's events go to whichever
link carried that session last (a session may move between Market workers); events for a
session no link carries stay in the journal for `replay`.

Market data: one venue subscription per stream whatever the number of links
(`workers.broker.streams`); each event is encoded once and queued on every subscribed link.

Operator events: the owner reports risk refusals, exits, kill-switch changes, venue outages
and resyncs and position corrections (`on_notable`); each goes up the control pipe as a
`WorkerEvent` (category `risk` or `venue`) to the BrokerManager's event log, through a bounded
buffer that never makes trading wait. The owner's last fills are in `info()["recent_fills"]`
(newest first, at most `owner.RECENT_FILLS`).

Drain: no new links; every link gets `resync {reason: "draining"}` so its Market re-learns the
account's owner. The worker keeps serving the links it has until the new owner fences it (which
closes them) or they go away, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from protocol.codec import encode
from protocol.control import EventCategory, Load
from protocol.errors import ErrorCode
from protocol.link import LinkWelcome, MdSubscribe, MdUnsubscribe, Replay, Route
from protocol.market import Channel, MarketEvent
from protocol.risk import RiskLimits
from tradefleet.service.web import ApiError, require_token
from workers.broker.adapters.base import Adapter, AdapterError
from workers.broker.lanes import SessionLanes
from workers.broker.link import MarketLink, read_frames, read_hello, stop_writer
from workers.broker.owner import AccountOwner, OwnerError, OwnerState, OwnerStopped
from workers.broker.risk.manager import KillSwitch, LimitsUpdate
from workers.broker.risk.records import KillScope
from workers.broker.streams import MarketCache, StreamKey, StreamTable, event_key
from workers.broker.venues import adapter_factory
from workers.runtime.service import WorkerContext, WorkerService

log = structlog.get_logger(__name__)

SERVICE_TOKEN_ENV = "TRADEFLEET_SERVICE_TOKEN"
CLOSE_OWNER_STOPPED = 1012  # service restart: re-learn the owner and reconnect
VENUE_EVENTS = frozenset({"venue_down", "venue_resync", "position_corrected"})
SESSION_GRANTS_KEPT = 100_000
"""Sessions whose latest grant the worker remembers (the most recently claimed ones)."""


def _fleet_switch(raw: Any) -> KillSwitch | None:
    """The assignment's `fleet_kill_switch`, checked. Raises `ValueError` naming the field."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("active"), bool) \
            or not raw.keys() <= {"active", "reason", "by"}:
        raise ValueError('assign.fleet_kill_switch is {"active": true|false, "reason"?, "by"?}')
    return KillSwitch(active=raw["active"], scope=KillScope.FLEET,
                      reason=str(raw.get("reason") or "")[:200],
                      by=str(raw.get("by") or "operator")[:64])


class BrokerService(WorkerService):
    """The Broker worker's service (module docstring)."""

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        service_token: str | None = None,
        adapters: Callable[[str], Adapter] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(ctx)
        self._token = (service_token if service_token is not None
                       else os.environ.get(SERVICE_TOKEN_ENV, ""))
        self._adapters = adapters or adapter_factory(ctx.config, ctx.data_dir, self._token)
        self._clock = clock
        self.owner: AccountOwner | None = None
        self.last_error: str | None = None
        self._assigning = asyncio.Lock()
        self._draining = False
        self._links: dict[int, MarketLink] = {}
        self._session_links: dict[str, MarketLink] = {}
        self._session_grants: dict[str, int] = {}  # the latest grant seen per session
        # A session's requests run in order; sessions do not wait for each other's venue calls.
        self._lanes = SessionLanes()
        self._streams = StreamTable()
        self._cache = MarketCache()
        self._tasks: set[asyncio.Task[Any]] = set()
        if not self._token:
            log.warning("no service token: every Market link will be refused",
                        env=SERVICE_TOKEN_ENV)

    # ------------------------------------------------------------ runtime hooks

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/link", self.link_endpoint)

    async def configure(self, params: dict[str, Any]) -> None:
        """`{"assign": {"account": A, "epoch"?: N, "fleet_kill_switch"?: {...}}}`: become A's
        order owner (claim, rebuild, connect, reconcile) before answering. Raises `ValueError`
        with the reason when refused.

        The journal is claimed with `epoch` when given, else with the worker's spawn epoch. A
        manager that hands an account to a standby spawned before the account's last owner
        must pass a fresh epoch (newer than every earlier claim), or the claim is refused.

        `fleet_kill_switch` `{active, reason?, by?}` is the BrokerManager's fleet-wide switch:
        it is handed to the owner's position manager right after the account is opened (and
        before any Market may link), so an account opened while the fleet is stopped refuses
        orders from the first one; a repeated assignment with a changed switch applies it too.
        """
        if "risk" in params:
            await self._configure_risk(params["risk"])
        assign = params.get("assign")
        if assign is None:
            return
        account = assign.get("account") if isinstance(assign, dict) else None
        if not isinstance(account, str) or not account:
            raise ValueError("a Broker assignment names an account: {\"assign\": "
                             "{\"account\": \"...\"}}")
        if account not in self.ctx.config.accounts:
            raise ValueError(f"account {account!r} is not in the configuration")
        epoch = assign.get("epoch", self.ctx.epoch)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise ValueError("assign.epoch must be a positive integer")
        fleet_switch = _fleet_switch(assign.get("fleet_kill_switch"))
        async with self._assigning:
            current = self.owner
            if current is not None and current.acting:
                if current.account == account:
                    if fleet_switch is not None:
                        await self._apply_fleet_switch(current, fleet_switch)
                    return
                raise ValueError(f"this worker already owns account {current.account!r}")
            if self._draining:
                raise ValueError("this worker is draining and takes no account")
            owner = AccountOwner(
                account=account,
                journal_path=self.ctx.data_dir / "journal" / f"{account}.sqlite",
                worker_id=self.ctx.worker_id,
                epoch=epoch,
                adapter_factory=self._adapters,
                outbox=self,
                clock=self._clock,
                limits=self.ctx.config.accounts[account].risk,
                retain_finished=self.ctx.config.accounts[account].retain_finished_orders,
                snapshot_after_entries=self.ctx.config.accounts[account].snapshot_after_entries,
                on_notable=self._on_notable,
            )
            structlog.contextvars.bind_contextvars(account=account)
            try:
                await owner.open()
                if fleet_switch is not None:
                    await self._apply_fleet_switch(owner, fleet_switch)
            except (OwnerError, ValueError) as exc:
                self.last_error = str(exc)
                log.error("assignment_refused", error=self.last_error)
                await owner.close()
                raise ValueError(str(exc)) from exc
            self.owner, self.last_error = owner, None

    async def _apply_fleet_switch(self, owner: AccountOwner, switch: KillSwitch) -> None:
        """The position manager ignores a switch it already holds, and a release of one it
        does not hold, so re-applying on every assignment is safe."""
        try:
            await owner.operator_risk(switch)
        except OwnerStopped as exc:
            raise ValueError(f"the account's owner has stopped: {exc}") from exc
        log.info("fleet_kill_switch_applied", active=switch.active,
                 kill_switch=owner.risk.kill_switch if owner.risk is not None else None)

    def _on_notable(self, notable: dict[str, Any]) -> None:
        """The owner's operator event: up the control pipe (never blocks, never raises)."""
        detail = dict(notable)
        event = str(detail.pop("event", "") or "account_event")
        message = str(detail.pop("message", "") or "")
        category = EventCategory.VENUE if event in VENUE_EVENTS else EventCategory.RISK
        log.info("operator_event", notable=event, category=category.value,
                 code=detail.get("code"))
        self.report_event(event, message, category, **detail)

    async def _configure_risk(self, params: Any) -> None:
        """`{"kill_switch": {"active", "reason"?, "by"?, "scope"?}}` and/or `{"limits": {…}}`
        (every `RiskLimits` field; absent ones are not limited): given to the account's
        position manager, which journals them, so they survive a failover. Raises
        `ValueError` with the reason when refused."""
        owner = self.owner
        if owner is None or not owner.acting or owner.risk is None:
            raise ValueError("this worker holds no account; risk commands go to the owner")
        if not isinstance(params, dict) or not params.keys() <= {"kill_switch", "limits"}:
            raise ValueError('risk takes {"kill_switch": {...}} and/or {"limits": {...}}')
        commands: list[KillSwitch | LimitsUpdate] = []
        if "limits" in params:
            try:
                commands.append(LimitsUpdate(RiskLimits.model_validate(params["limits"])))
            except ValidationError as exc:
                raise ValueError(f"invalid limits: {exc}") from exc
        kill = params.get("kill_switch")
        if kill is not None:
            if not isinstance(kill, dict) or not isinstance(kill.get("active"), bool):
                raise ValueError('kill_switch needs {"active": true|false}')
            try:
                scope = KillScope(kill.get("scope", KillScope.ACCOUNT.value))
            except ValueError as exc:
                raise ValueError("kill_switch.scope is account or fleet") from exc
            commands.append(KillSwitch(active=kill["active"], scope=scope,
                                       reason=str(kill.get("reason") or "")[:200],
                                       by=str(kill.get("by") or "operator")[:64]))
        try:
            for command in commands:
                await owner.operator_risk(command)
        except OwnerStopped as exc:
            raise ValueError(f"the account's owner has stopped: {exc}") from exc
        log.info("risk_configured", kill_switch=owner.risk.kill_switch,
                 limits="limits" in params)

    async def begin_drain(self) -> None:
        await super().begin_drain()
        self._draining = True
        for link in list(self._links.values()):
            link.resync("draining")
            # A Market waits for fresh book snapshots after a resync; the venue sends none
            # here, so hand it the books as they are.
            for key in self._streams.streams_of(link.id):
                current = self._cache.current(key) if key.channel is Channel.BOOK else None
                if current is not None:
                    link.send_market(encode(current))

    def has_work(self) -> bool:
        owner = self.owner
        if owner is None or not owner.acting:
            return False
        return owner.inflight > 0 or bool(self._links)

    async def stop(self) -> None:
        for link in list(self._links.values()):
            link.close_soon(1001, "broker worker stopping")
        await self._lanes.close()
        if self.owner is not None:
            await self.owner.close()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)

    def load(self) -> Load:
        return Load(sessions=len(self._links), subscriptions=len(self._streams.streams()),
                    accepting=self.accepting)

    def info(self) -> dict[str, Any]:
        owner = self.owner
        out: dict[str, Any] = owner.info() if owner is not None else {"state": "standby"}
        out["links"] = len(self._links)
        out["sessions"] = len(self._session_links)
        out["requests_pending"] = self._lanes.pending
        if owner is not None:
            out["epoch"] = owner.epoch
        if self.last_error and "error" not in out:
            out["error"] = self.last_error
        return out

    # ------------------------------------------------------------ the link endpoint

    async def link_endpoint(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/link` → WebSocket (module docstring)."""
        if not self._token:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "this Broker has no service token")
        require_token(request, self._token)
        owner = self.owner
        if owner is not None and owner.state is OwnerState.FENCED:
            raise ApiError(503, ErrorCode.STALE_EPOCH,
                           f"this worker no longer owns {owner.account}; ask the BrokerManager")
        if owner is None or owner.state in (OwnerState.OPENING, OwnerState.RECONCILING) \
                or not owner.acting:
            raise ApiError(503, ErrorCode.NOT_READY, "no account is assigned and reconciled yet")
        if self._draining:
            raise ApiError(503, ErrorCode.DRAINING,
                           "this Broker is draining; ask the BrokerManager for the owner")
        if not self.accepting:
            raise ApiError(503, ErrorCode.NOT_READY,
                           "this Broker has lost its manager and takes no new links for now")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        hello = await read_hello(ws)
        if hello is None:
            await ws.close(code=1008, message=b"first frame must be link_hello")
            return ws
        link = MarketLink(ws, hello.market_id, transport=request.transport)
        link.send(encode(LinkWelcome(account=owner.account, broker_id=self.ctx.worker_id,
                                     epoch=owner.epoch, instruments=owner.instruments)))
        self._links[link.id] = link
        writer = asyncio.create_task(link.run_writer(), name=f"link-writer:{hello.market_id}")
        log.info("link_open", market_id=hello.market_id)
        try:
            await read_frames(ws, link, self)
        finally:
            await self._link_closed(link)
            link.close_soon(1000, "closed")
            await stop_writer(writer)
            log.info("link_closed", market_id=hello.market_id)
        return ws

    async def _link_closed(self, link: MarketLink) -> None:
        self._links.pop(link.id, None)
        for session_id in link.sessions:
            if self._session_links.get(session_id) is link:
                del self._session_links[session_id]
        for key, depth in self._streams.drop_link(link.id):
            self._cache.forget(key)
            if self.owner is not None:
                await self.owner.unsubscribe(key, depth)

    def _carry(self, link: MarketLink, session_id: str, grant: int | None) -> None:
        """The session's events go to `link` from now on, unless `link` speaks for an older
        grant of the session than the one whose link has them now (a Market that has not yet
        noticed that the algo left it for another Market)."""
        if grant is not None:
            latest = self._session_grants.pop(session_id, 0)
            self._session_grants[session_id] = max(latest, grant)  # newest last
            if len(self._session_grants) > SESSION_GRANTS_KEPT:
                del self._session_grants[next(iter(self._session_grants))]
            if grant < latest and session_id in self._session_links:
                log.info("stale_session_claim_ignored", session_id=session_id, grant=grant,
                         latest=latest)
                return
        previous = self._session_links.get(session_id)
        if previous is not link:
            if previous is not None:
                previous.sessions.discard(session_id)
            self._session_links[session_id] = link
            link.sessions.add(session_id)

    # ------------------------------------------------------------ LinkHandler

    async def on_route(self, link: MarketLink, message: Route) -> None:
        owner = self.owner
        if owner is None:
            return
        if not message.detached:
            self._carry(link, message.session_id, message.grant)
        await self._lanes.room()  # too much queued: stop reading this link for now
        self._lanes.submit(message.session_id, partial(
            owner.route, message.session_id, message.customer, message.msg))

    def on_replay(self, link: MarketLink, message: Replay) -> None:
        owner = self.owner
        if owner is None:
            return
        self._carry(link, message.session_id, message.grant)

        async def replay() -> None:  # behind the session's requests already under way
            with contextlib.suppress(OwnerStopped):
                link.send(owner.replay(message.session_id, message.after_seq))

        self._lanes.submit(message.session_id, replay)

    async def on_subscribe(self, link: MarketLink, message: MdSubscribe) -> None:
        owner = self.owner
        if owner is None:
            return
        joined = self._streams.subscribe(link.id, message.stream)
        key = joined.key
        try:
            if joined.venue:
                await owner.subscribe(key, joined.depth)
                return
            if joined.depth_grew:
                # Restart the venue's book deeper: every link on it gets a fresh snapshot.
                self._cache.forget(key)
                await owner.unsubscribe(key, joined.previous_depth)
                await owner.subscribe(key, joined.depth)
                return
        except (AdapterError, OwnerStopped) as exc:
            log.warning("md_subscribe_failed", market_id=link.market_id,
                        instrument=key.instrument, channel=key.channel.value, error=str(exc))
            self._streams.unsubscribe(link.id, message.stream)
            return
        if key.channel in (Channel.BOOK, Channel.TICKER):
            # Joining a running stream: start from the current state (a Market that asks
            # again for a book it holds wants a fresh snapshot too).
            current = self._cache.current(key)
            if current is not None:
                link.send_market(encode(current))

    async def on_unsubscribe(self, link: MarketLink, message: MdUnsubscribe) -> None:
        left = self._streams.unsubscribe(link.id, message.stream)
        if left is None or not left.venue:
            return
        self._cache.forget(left.key)
        if self.owner is not None:
            await self.owner.unsubscribe(left.key, left.depth)

    # ------------------------------------------------------------ Outbox (from the owner)

    def to_session(self, session_id: str, frame: bytes) -> None:
        link = self._session_links.get(session_id)
        if link is not None:
            link.send(frame)

    def market(self, event: MarketEvent) -> None:
        self._cache.apply(event)
        key: StreamKey = event_key(event)
        listeners = self._streams.links(key)
        if not listeners:
            return
        data = encode(event)
        for link_id in listeners:
            link = self._links.get(link_id)
            if link is not None:
                link.send_market(data)

    def resync(self, reason: str) -> None:
        for link in list(self._links.values()):
            link.resync(reason)

    def stopped(self, reason: str) -> None:
        """The owner was fenced or failed: drop every link now, release the venue soon."""
        for link in list(self._links.values()):
            link.resync(f"owner stopped: {reason}")
            link.close_soon(CLOSE_OWNER_STOPPED, "owner stopped")
        owner = self.owner
        if owner is not None:
            task = asyncio.create_task(owner.close(), name="owner-close")
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_name(), error=repr(task.exception()))
