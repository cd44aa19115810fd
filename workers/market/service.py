"""The Market worker's aiohttp shell around `MarketCore`.

`WS /v1/session` (bearer session token, checked before the upgrade): each connection has a
reader (frames → core). Output is written in rounds: a round is scheduled when the core has
output (after the frames ready in this pass of the event loop have all been fed to it), and
waits as long as the previous round took, at most `MAX_WRITE_PAUSE_S`. In a round each
connection's outbox leaves as `batch` frames (at most `max_events_per_frame` events each), so
fan-out costs one socket write per client per round, not one per event, and under load events
coalesce into larger frames.

The write goes straight to the connection's transport when nothing stands in the way (no
compression negotiated, nothing else mid-write on it, little already queued in the transport):
identical outboxes — every session of a stream after a fan-out — share one frame, built once
per round. Otherwise the connection's writer task sends it through aiohttp, which waits for the
socket to drain; the writer task also performs the closes the core asks for.
One `BrokerLink` per account, opened when the first session of that account arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from protocol.control import Load
from protocol.errors import ErrorCode
from protocol.link import LinkWelcome
from protocol.session import encode_batch
from tradefleet.service.session_tokens import InvalidSessionToken, verify
from tradefleet.service.web import ApiError, bearer
from tradefleet.service.wsframes import direct_transport, server_frame
from workers.market.broker_link import BrokerDirectory, BrokerLink
from workers.market.core import Connection, MarketCore
from workers.market.settings import MarketSettings
from workers.runtime.service import WorkerContext, WorkerService

log = structlog.get_logger(__name__)

SERVICE_TOKEN_ENV = "TRADEFLEET_SERVICE_TOKEN"
HOUSEKEEPING_S = 1.0
WRITER_STOP_S = 2.0
MIN_WRITE_DELAY_S = 0.0005
"""A pause before the next write round shorter than this is not worth a timer."""
MAX_WRITE_PAUSE_S = 0.002
"""The longest pause between two write rounds (what coalescing may add to an event's latency)."""

_FrameCache = dict[tuple[int, int, int], tuple[list[bytes], bytes]]


def _framed(chunk: list[bytes], cache: _FrameCache) -> bytes:
    """The text frame carrying `chunk` (one event alone, several as a `batch`), built once per
    distinct chunk: the cache is keyed by the identities of its ends and checked in full."""
    key = (len(chunk), id(chunk[0]), id(chunk[-1]))
    hit = cache.get(key)
    if hit is not None and hit[0] == chunk:
        return hit[1]
    data = server_frame(chunk[0] if len(chunk) == 1 else encode_batch(chunk))
    cache[key] = (chunk, data)
    return data


async def _send_text(ws: web.WebSocketResponse, data: bytes) -> None:
    # JSON goes out as text frames without a decode/encode round trip where aiohttp allows.
    if hasattr(ws, "send_frame"):
        await ws.send_frame(data, WSMsgType.TEXT)
    else:  # aiohttp < 3.11
        await ws.send_str(data.decode())


class MarketService(WorkerService):
    """Algo sessions on `WS /v1/session`; market data and orders through Broker links."""

    def __init__(self, ctx: WorkerContext, *, service_token: str | None = None,
                 settings: MarketSettings | None = None) -> None:
        super().__init__(ctx)
        self.settings = settings or ctx.config.market
        self._token = service_token if service_token is not None else \
            os.environ.get(SERVICE_TOKEN_ENV, "")
        self.core = MarketCore(ctx.worker_id, self.settings)
        self.links: dict[str, BrokerLink] = {}
        self._wakers: dict[int, asyncio.Event] = {}
        self._sockets: dict[int, web.WebSocketResponse] = {}
        self._direct: dict[int, tuple[asyncio.Transport, web.WebSocketResponse]] = {}
        """Transports of the connections that may be written to directly (uncompressed)."""
        self._busy: set[int] = set()
        self._write_pending = False
        self._next_write_at = 0.0
        """Connections whose writer task is sending: direct writes would overtake it."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._directory: BrokerDirectory | None = None
        self._housekeeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ WorkerService hooks

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/session", self._session)

    async def start(self) -> None:
        if not self._token:
            log.error(f"{SERVICE_TOKEN_ENV} is not set: every session will be refused")
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=self.settings.lookup_timeout_s))
        self._directory = BrokerDirectory(self._http, self.ctx.data_dir, self._token,
                                          self.settings.lookup_timeout_s)
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="market-housekeeping")

    async def stop(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        for ws in list(self._sockets.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"shutdown"), 1)
        for link in list(self.links.values()):
            await link.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WRITER_STOP_S)
        if self._http is not None:
            await self._http.close()

    def set_accepting(self, accepting: bool) -> None:
        super().set_accepting(accepting)
        self.core.accepting = accepting

    async def begin_drain(self) -> None:
        await super().begin_drain()
        self.core.begin_drain()
        self._flush()
        log.info("draining: reconnect hints sent", sessions=self.core.attached)

    def has_work(self) -> bool:
        return self.core.has_sessions()

    def load(self) -> Load:
        core = self.core
        msgs_in, msgs_out = core.counters.rates(time.monotonic())
        subscriptions = sum(len(s.streams) for s in core.sessions.values() if s.conn is not None)
        return Load(sessions=core.attached, subscriptions=subscriptions, msgs_in_per_s=msgs_in,
                    msgs_out_per_s=msgs_out, accepting=self.accepting and not core.draining,
                    **core.latency.summary())

    def info(self) -> dict[str, Any]:
        return {"links": {account: {"ready": link.ready, "epoch": link.epoch,
                                    "broker_id": link.broker_id,
                                    "upstream_streams": len(link.table.upstream())}
                          for account, link in self.core.links.items()},
                "duplicates_dropped": self.core.counters.duplicates_dropped,
                "seqs_skipped": self.core.counters.seqs_skipped}

    # ------------------------------------------------------------------ algo sessions

    async def _session(self, request: web.Request) -> web.StreamResponse:
        token = bearer(request)
        if token is None:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing bearer session token")
        try:
            claims = verify(self._token, token)
        except InvalidSessionToken as exc:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, str(exc)) from exc
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_frame_bytes, heartbeat=20.0)
        await ws.prepare(request)
        conn = self.core.connect(claims, time.monotonic())
        waker = self._wakers[conn.conn_id] = asyncio.Event()
        self._sockets[conn.conn_id] = ws
        transport = request.transport
        if transport is not None and not ws.compress:
            self._direct[conn.conn_id] = (transport, ws)
        writer = self._spawn(self._write(conn, ws, waker), f"session-writer:{conn.conn_id}")
        log_ = log.bind(session_id=claims.session_id, account=claims.account,
                        conn_id=conn.conn_id)
        try:
            if conn.closing is None:
                link = self._ensure_link(claims.account)
                if not link.ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(link.ready.wait(), self.settings.link_ready_wait_s)
            self._flush()
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self.core.receive(conn.conn_id, msg.data, time.monotonic())
                    await self._write_links()
                    self._flush()
                    if conn.closing is not None:
                        break
                elif msg.type is WSMsgType.ERROR:
                    log_.info("session connection error", error=repr(ws.exception()))
                    break
            if conn.closing is not None:
                # The writer sends what is queued, then closes with the core's code.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), WRITER_STOP_S)
        finally:
            self.core.disconnect(conn.conn_id, time.monotonic())
            self._wakers.pop(conn.conn_id, None)
            self._sockets.pop(conn.conn_id, None)
            self._direct.pop(conn.conn_id, None)
            self._busy.discard(conn.conn_id)
            writer.cancel()
            self._flush()
            log_.info("session connection closed", close_code=ws.close_code)
        return ws

    async def _write(self, conn: Connection, ws: web.WebSocketResponse,
                     waker: asyncio.Event) -> None:
        limit = self.settings.max_events_per_frame
        busy = self._busy
        try:
            while True:
                await waker.wait()
                waker.clear()
                busy.add(conn.conn_id)
                try:
                    while conn.outbox:
                        frames, conn.outbox = conn.outbox, []
                        for start in range(0, len(frames), limit):
                            chunk = frames[start:start + limit]
                            await _send_text(ws, chunk[0] if len(chunk) == 1
                                             else encode_batch(chunk))
                finally:
                    busy.discard(conn.conn_id)
                if conn.closing is not None:
                    code, reason = conn.closing
                    await ws.close(code=code, message=reason.encode()[:120])
                    return
        except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-write
            log.debug("session write failed", conn_id=conn.conn_id, error=repr(exc))

    async def _write_links(self) -> None:
        """Write the link frames an algo's message made from its reader, at once where the
        link is idle (see `BrokerLink.write_now`)."""
        for account, frames in self.core.take_link_frames().items():
            link = self.links.get(account)
            if link is not None:
                await link.write_now(frames)

    def _flush(self) -> None:
        """Hand link frames to their links now; write the sessions' output once the event loop
        has run what is ready (every link frame read meanwhile then leaves in the same writes)."""
        for account, frames in self.core.take_link_frames().items():
            link = self.links.get(account)
            if link is not None:
                link.send(frames)
        if not self._write_pending:
            self._write_pending = True
            loop = asyncio.get_running_loop()
            delay = self._next_write_at - time.monotonic()
            if delay > MIN_WRITE_DELAY_S:
                loop.call_later(delay, self._write_out)
            else:
                loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        """Write the output of connections that have some: directly, or by waking their
        writer task. The next round starts no sooner than this one took (up to
        `MAX_WRITE_PAUSE_S`): under load, what arrives meanwhile leaves in fewer, larger
        frames; when idle, rounds are short and the pause is nothing."""
        self._write_pending = False
        started = time.monotonic()
        self._write_round()
        ended = time.monotonic()
        self._next_write_at = ended + min(ended - started, MAX_WRITE_PAUSE_S)

    def _write_round(self) -> None:
        connections = self.core.connections
        limit = self.settings.max_events_per_frame
        cache: _FrameCache = {}
        for conn_id in self.core.take_dirty():
            conn = connections.get(conn_id)
            transport = self._writable(conn_id, conn)
            if transport is None or conn is None:
                waker = self._wakers.get(conn_id)
                if waker is not None:
                    waker.set()
                continue
            frames, conn.outbox = conn.outbox, []
            if len(frames) <= limit:
                if frames:
                    transport.write(_framed(frames, cache))
            else:
                for start in range(0, len(frames), limit):
                    transport.write(_framed(frames[start:start + limit], cache))

    def _writable(self, conn_id: int, conn: Connection | None) -> asyncio.Transport | None:
        """The connection's transport if its output may be written there and then."""
        entry = self._direct.get(conn_id)
        if entry is None or conn is None or conn.closing is not None or conn_id in self._busy:
            return None
        transport, ws = entry
        return direct_transport(ws, transport)

    # ------------------------------------------------------------------ broker links

    def _ensure_link(self, account: str) -> BrokerLink:
        link = self.links.get(account)
        if link is None:
            assert self._http is not None and self._directory is not None, "start() first"
            link = self.links[account] = BrokerLink(
                account, market_id=self.ctx.worker_id, service_token=self._token,
                http=self._http, directory=self._directory, handler=self,
                settings=self.settings)
            link.start()
        return link

    def link_up(self, account: str, welcome: LinkWelcome) -> None:
        self.core.link_up(account, welcome)
        self._flush()

    def link_frame(self, account: str, data: bytes | str) -> None:
        self.core.link_frame(account, data, time.monotonic())
        self._flush()

    def link_down(self, account: str) -> None:
        self.core.link_down(account)
        self._flush()

    # ------------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                self.core.expire(time.monotonic())
                self._flush()
            except Exception:
                log.exception("market housekeeping failed")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", task=task.get_name(), error=repr(task.exception()))
