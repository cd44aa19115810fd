"""The Market worker's outside world for functional tests, faked on loopback.

- `FakeBrokerManager` answers `GET /v1/accounts` (which Broker owns which account).
- `FakeBroker` speaks the Broker side of `protocol.link`: welcome, routes, market-data
  subscriptions, session events with journal seqs, replays. Several instances can share one
  `FakeJournal`, as a replacement Broker shares the account's journal file with its
  predecessor.
- `running_market` runs a real `MarketService` in-process on port 0.

Each fake records what it received so tests can assert on the wire, and can misbehave on
purpose (drop live events, drop its links) to exercise the Market's recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from protocol.control import WorkerKind
from protocol.market import InstrumentSpec
from tradefleet.config import FleetConfig
from tradefleet.service.session_tokens import mint
from tradefleet.service.web import make_app, require_token
from workers.market.service import MarketService
from workers.market.settings import MarketSettings
from workers.runtime.service import WorkerContext

SERVICE_TOKEN = "test-service-token-0123456789"
SPEC = InstrumentSpec(instrument="BTC/USD", tick_size=Decimal("0.5"), lot_size=Decimal("0.01"),
                      min_qty=Decimal("0.01"))


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def wait_for(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate()` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class FakeBrokerManager:
    """`GET /v1/accounts` from a dict the test edits."""

    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}
        self.lookups = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = make_app()
        app.router.add_get("/v1/accounts", self._accounts)
        self._runner, self.url = await _serve(app)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def assign(self, account: str, broker: FakeBroker) -> None:
        self.accounts[account] = {"worker_id": broker.broker_id, "url": broker.url,
                                  "epoch": broker.epoch, "state": "up"}

    async def _accounts(self, request: web.Request) -> web.Response:
        require_token(request, SERVICE_TOKEN)
        self.lookups += 1
        return web.json_response({"accounts": self.accounts})


@dataclass
class FakeJournal:
    """Per-session order events with their seqs, as the account journal keeps them."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)

    def append(self, session_id: str, event: dict[str, Any]) -> dict[str, Any]:
        log = self.events.setdefault(session_id, [])
        stamped = {**event, "seq": len(log) + 1}
        log.append(stamped)
        return stamped

    def after(self, session_id: str, seq: int) -> list[dict[str, Any]]:
        return [e for e in self.events.get(session_id, []) if e["seq"] > seq]

    def last_seq(self, session_id: str) -> int:
        return len(self.events.get(session_id, []))


def order_event(kind: str, order: dict[str, Any], status: str, filled: str = "0",
                **extra: Any) -> dict[str, Any]:
    qty = Decimal(order["qty"])
    remaining = "0" if status in ("filled", "cancelled", "rejected", "expired") else \
        str(qty - Decimal(filled))
    event = {"type": kind, "account": order["account"],
             "client_order_id": order["client_order_id"], "order_id": f"X-{order['client_order_id']}",
             "instrument": order["instrument"], "side": order["side"],
             "order_type": order.get("order_type", "limit"), "qty": order["qty"],
             "time_in_force": order.get("time_in_force", "GTC"), "status": status,
             "filled_qty": filled, "remaining_qty": remaining, "ts": time.time_ns(), **extra}
    if order.get("price") is not None:
        event["price"] = order["price"]
    return event


def snapshot_of(order: dict[str, Any]) -> dict[str, Any]:
    """An `order_snapshot` of an order's last event (without the event-specific fields)."""
    snapshot = {k: v for k, v in order.items()
                if k not in ("seq", "fill", "reason", "message")}
    snapshot["type"] = "order_snapshot"
    return snapshot


class FakeBroker:
    """The Broker side of the link for one account."""

    def __init__(self, account: str = "paper-1", *, epoch: int = 1,
                 journal: FakeJournal | None = None, broker_id: str = "broker-1",
                 fill_orders: bool = False) -> None:
        self.account = account
        self.epoch = epoch
        self.broker_id = broker_id
        self.journal = journal or FakeJournal()
        self.fill_orders = fill_orders
        self.received: list[dict[str, Any]] = []
        self.links: list[web.WebSocketResponse] = []
        self.drop_live = False
        """While set, session events are journaled but not sent live (as if lost on a link)."""
        self.swallow: set[str] = set()
        """Route types dropped unanswered, as if lost with a process that died holding them."""
        self.swallowed: list[dict[str, Any]] = []
        self.positions: list[dict[str, Any]] = []
        """What `get_positions` answers (raw wire dicts: a test may make them unreadable)."""
        self.url = ""
        self._owner: dict[str, web.WebSocketResponse] = {}  # session → link it lives on
        self._fills = itertools.count(1)
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = make_app()
        app.router.add_get("/v1/link", self._link)
        self._runner, self.url = await _serve(app)
        return self.url

    async def stop(self) -> None:
        await self.drop_links()
        if self._runner is not None:
            await self._runner.cleanup()

    async def drop_links(self) -> None:
        for ws in list(self.links):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"broker going away")

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]

    async def push_market(self, *events: dict[str, Any]) -> None:
        frame = orjson.dumps({"type": "market", "events": list(events)})
        for ws in list(self.links):
            with contextlib.suppress(Exception):
                await ws.send_bytes(frame)

    async def emit(self, session_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Journal an order event for a session and send it live (unless `drop_live`)."""
        stamped = self.journal.append(session_id, event)
        ws = self._owner.get(session_id)
        if ws is not None and not ws.closed and not self.drop_live:
            await ws.send_bytes(orjson.dumps(
                {"type": "session_event", "session_id": session_id, "event": stamped}))
        return stamped

    async def _link(self, request: web.Request) -> web.StreamResponse:
        require_token(request, SERVICE_TOKEN)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        hello = orjson.loads((await ws.receive(timeout=5)).data)
        assert hello["type"] == "link_hello", hello
        self.received.append(hello)
        await ws.send_bytes(orjson.dumps({
            "type": "link_welcome", "account": self.account, "broker_id": self.broker_id,
            "epoch": self.epoch, "instruments": [SPEC.model_dump(mode="json")]}))
        self.links.append(ws)
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                data = orjson.loads(msg.data)
                self.received.append(data)
                await self._on_frame(ws, data)
        finally:
            self.links.remove(ws)
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind == "replay":
            session_id = data["session_id"]
            self._owner[session_id] = ws
            await ws.send_bytes(orjson.dumps({
                "type": "replayed", "session_id": session_id,
                "events": self.journal.after(session_id, data["after_seq"]),
                "last_seq": self.journal.last_seq(session_id)}))
        elif kind == "route":
            self._owner[data["session_id"]] = ws
            await self._route(data["session_id"], data["msg"])

    async def _route(self, session_id: str, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind in self.swallow:
            self.swallowed.append(msg)
            return
        orders = self.journal.orders
        if kind == "new_order":
            cid = msg["client_order_id"]
            if cid in orders:  # idempotent: the state as it is, an answer without a seq
                await self._answer(session_id, snapshot_of(orders[cid]))
                return
            accepted = order_event("order_accepted", msg, "accepted")
            orders[cid] = accepted
            await self.emit(session_id, accepted)
            if self.fill_orders:
                price = msg.get("price") or "100"
                fill = {"type": "fill", "fill_id": f"F{next(self._fills)}",
                        "account": msg["account"], "client_order_id": cid,
                        "instrument": msg["instrument"], "side": msg["side"], "qty": msg["qty"],
                        "price": price, "fee": "0", "fee_currency": "USD",
                        "liquidity": "taker", "ts": time.time_ns()}
                filled = order_event("order_filled", msg, "filled", filled=msg["qty"],
                                     fill=fill, avg_price=price)
                orders[cid] = filled
                await self.emit(session_id, filled)
        elif kind == "cancel_order":
            cid = msg["client_order_id"]
            order = orders.get(cid)
            if order is None:
                await self._answer(session_id, {
                    "type": "error", "code": "order_not_found", "client_order_id": cid,
                    "message": f"no order {cid!r}"})
                return
            if order["status"] in ("filled", "cancelled", "rejected", "expired"):
                await self._answer(session_id, snapshot_of(order))  # as the Broker does
                return
            cancelled = order_event("order_cancelled", order, "cancelled",
                                    filled=order["filled_qty"], reason="requested")
            orders[cid] = cancelled
            await self.emit(session_id, cancelled)
        elif kind == "get_positions":
            await self._answer(session_id, {"type": "positions", "account": msg["account"],
                                            "positions": self.positions, "ref": msg.get("ref"),
                                            "ts": time.time_ns()})
            await self._answer(session_id, {"type": "balances", "account": msg["account"],
                                            "cash": {"USD": "1000"}, "ref": msg.get("ref"),
                                            "ts": time.time_ns()})
        elif kind == "get_open_orders":
            working = [snapshot_of(o) for o in orders.values()
                       if o["status"] in ("accepted", "partially_filled")]
            await self._answer(session_id, {"type": "open_orders", "account": msg["account"],
                                            "orders": working, "ref": msg.get("ref"),
                                            "ts": time.time_ns()})

    async def _answer(self, session_id: str, event: dict[str, Any]) -> None:
        ws = self._owner.get(session_id)
        if ws is not None and not ws.closed:
            clean = {k: v for k, v in event.items() if v is not None}
            await ws.send_bytes(orjson.dumps(
                {"type": "session_event", "session_id": session_id, "event": clean}))


@dataclass
class RunningMarket:
    service: MarketService
    url: str
    runner: web.AppRunner

    @property
    def ws_url(self) -> str:
        return "ws://" + self.url.removeprefix("http://") + "/v1/session"

    async def stop(self) -> None:
        """Stop the worker: its sessions' sockets close (1001) and its links drop."""
        await self.service.stop()
        await self.runner.cleanup()


async def start_market(data_dir: Path, *, worker_id: str = "market-1",
                       settings: MarketSettings | None = None) -> RunningMarket:
    """A real MarketService on 127.0.0.1:0, looking Brokers up through `data_dir`."""
    ctx = WorkerContext(worker_id=worker_id, kind=WorkerKind.MARKET, epoch=1, location="test",
                        manager_url="http://127.0.0.1:9", data_dir=data_dir,
                        config=FleetConfig())
    service = MarketService(ctx, service_token=SERVICE_TOKEN,
                            settings=settings or MarketSettings(link_backoff_max_s=0.2))
    app = make_app()
    service.add_routes(app)
    runner, url = await _serve(app)
    await service.start()
    return RunningMarket(service, url, runner)


@contextlib.asynccontextmanager
async def running_market(data_dir: Path, *, worker_id: str = "market-1",
                         settings: MarketSettings | None = None) -> AsyncIterator[RunningMarket]:
    market = await start_market(data_dir, worker_id=worker_id, settings=settings)
    try:
        yield market
    finally:
        await market.stop()


class FakeMarketManager:
    """`POST /v1/sessions`: API token → customer, session token minted with the service
    token, the WebSocket URL of the first Market in `markets` that is not draining (with
    `rotate`, of each live Market in turn)."""

    def __init__(self, tokens: dict[str, tuple[str, list[str]]]) -> None:
        self.tokens = tokens  # api token → (customer, accounts)
        self.markets: list[RunningMarket] = []
        self.via: dict[str, str] = {}  # a Market's ws_url → the URL handed out instead
        self.rotate = False  # hand the live Markets out in turn instead of the first one
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)

    async def start(self) -> str:
        app = make_app()
        app.router.add_post("/v1/sessions", self._sessions)
        self._runner, self.url = await _serve(app)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sessions(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if auth not in self.tokens:
            return web.json_response({"error": {"code": "unauthorized",
                                                "message": "unknown API token"}}, status=401)
        customer, accounts = self.tokens[auth]
        body = await request.json() if request.can_read_body else {}
        self.requests.append(body)
        account = body.get("account") or accounts[0]
        if account not in accounts:
            return web.json_response({"error": {"code": "forbidden", "field": "account",
                                                "message": "account not allowed"}}, status=403)
        live = [m for m in self.markets if not m.service.core.draining]
        if not live:
            return web.json_response({"error": {"code": "unavailable",
                                                "message": "no Market"}}, status=503)
        session_id = body.get("session_id") or f"{customer}.s{next(self._ids)}"
        token, expires_at = mint(SERVICE_TOKEN, session_id, customer, account, 3600)
        market = live[len(self.requests) % len(live)] if self.rotate else live[0]
        return web.json_response({"session_id": session_id, "session_token": token,
                                  "ws_url": self.via.get(market.ws_url, market.ws_url),
                                  "account": account,
                                  "customer": customer, "expires_at": expires_at})


def point_at_broker_manager(data_dir: Path, manager: FakeBrokerManager) -> None:
    run = data_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "broker-manager.url").write_text(manager.url + "\n")


def session_token(session_id: str, *, customer: str = "acme", account: str = "paper-1",
                  ttl_s: float = 300) -> str:
    """What the MarketManager would hand out for this session."""
    return mint(SERVICE_TOKEN, session_id, customer, account, ttl_s)[0]


class RawSession:
    """A bare WebSocket algo client: sends dicts, reads events with batches flattened."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self._buffer: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, http: Any, market: RunningMarket, session_id: str, *,
                   resume_from_seq: int | None = None, token: str | None = None,
                   hello: bool = True) -> RawSession:
        ws = await http.ws_connect(market.ws_url, headers={
            "Authorization": f"Bearer {token or session_token(session_id)}"})
        session = cls(ws)
        if hello:
            frame: dict[str, Any] = {"type": "hello", "session_id": session_id}
            if resume_from_seq is not None:
                frame["resume_from_seq"] = resume_from_seq
            await session.send(frame)
        return session

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_bytes(orjson.dumps(frame))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event; raises `ConnectionError` (with the close code) if the server closed."""
        while not self._buffer:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                raise ConnectionError(f"closed with {self.ws.close_code}")
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                raise ConnectionError(f"unexpected {msg.type}")
            data = orjson.loads(msg.data)
            self._buffer.extend(data["events"] if data["type"] == "batch" else [data])
        event = self._buffer.pop(0)
        self.seen.append(event)
        return event

    async def expect(self, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """Read until an event of `kind` (matching `match`) arrives; return it."""
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event

    async def closed_with(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; return its close code."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ConnectionError):
            while True:
                await self.next(max(0.01, deadline - time.monotonic()))
        return self.ws.close_code  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.ws.close()
