"""`MarketClient`: an algo's connection to tradefleet, through a MarketManager.

    async with await MarketClient.connect("http://127.0.0.1:7702", api_token) as client:
        await client.subscribe("BTC/USD", "book", depth=5)
        order = await client.place_order("BTC/USD", "buy", "0.01", price="100.5")
        await order.accepted()
        async for event in client.events():
            ...

Works in a script (`asyncio.run`) and in Jupyter (top-level `await`): everything is created in
the running loop when `connect` is awaited; nothing global.

If the Market worker goes away (crash, drain, network), the client asks the MarketManager to
resume the session — possibly on another Market worker — presenting the last `seq` it
processed. The server replays what was missed; the client re-subscribes what the new Market
did not restore and re-sends orders and signals that were never answered (safe: the
client_order_id and signal_id are idempotency keys), and each open order's latest cancel and
modify not yet confirmed (safe: the Broker answers a cancel of a cancelled order, and a modify
to the order's present qty and price, with the order's state). Order events, signal answers
(`SignalAccepted`, `SignalRejected`) and fired exits (`ExitFired`) share the session's `seq`
and are deduplicated by it here too, so each reaches `events()` (and its handle or
`send_signal` call) exactly once; the answer to a re-sent signal, which has no `seq`,
completes `send_signal` but is not a second event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson
from pydantic import ValidationError

from protocol.codec import CodecError, decode
from protocol.errors import ErrorCode
from protocol.market import MarketEvent, Side
from protocol.orders import (
    BalancesSnapshot,
    Fill,
    OpenOrders,
    OrderSnapshot,
    PositionsSnapshot,
)
from protocol.orders import OrderEvent as OrderEventTypes
from protocol.session import (
    Error,
    Ping,
    ProtocolError,
    Reconnect,
    ServerEvent,
    Subscribed,
    Unsubscribed,
    Welcome,
    parse_client_message,
    parse_server_message,
)
from protocol.signals import ExitFired, SignalAccepted, SignalRejected
from tradefleet.client.backoff import ReconnectPolicy
from tradefleet.client.errors import (
    AuthError,
    ClientError,
    ConnectionLost,
    OrderRejected,
    RequestFailed,
    RequestTimeout,
)
from tradefleet.client.orders import OrderHandle, OrderTracker
from tradefleet.client.sessions import SessionGrant, request_session

log = logging.getLogger("tradefleet.client")

DecimalLike = Decimal | int | str
"""Prices and quantities: `Decimal`, `int` or a decimal string. Floats are refused (inexact)."""

_ORDER_EVENT_TYPES = tuple(OrderEventTypes.__args__)
_MARKET_EVENT_TYPES = tuple(MarketEvent.__args__)
_CLOSE_SUPERSEDED = "superseded"
_SIGNAL_EVENTS_KEPT = 10_000

StreamKey = tuple[str, str, int | None, str | None]


class _Reattach(Exception):
    """This attempt to (re)open the session failed in a way worth retrying."""


@dataclass(eq=False)
class _Pending:
    frame: dict[str, Any]
    expect: str
    future: asyncio.Future[Any]
    key: StreamKey | None = None


def _wire(value: Any) -> Any:
    """Decimals go on the wire as plain-notation strings; other values as given (a float is
    passed through so the protocol's own check refuses it with a clear message)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _key(instrument: str, channel: Any, depth: int | None, interval: Any) -> StreamKey:
    return (instrument, str(getattr(channel, "value", channel)), depth,
            None if interval is None else str(getattr(interval, "value", interval)))


class EventStream:
    """The client's events, in arrival order. Iterate with `async for`.

    One stream per client is the intended use (several iterators share and split the events).
    Cancelling a pending `__anext__` loses nothing. Ends when the client is closed; raises the
    reason (`AuthError`, `ConnectionLost`) if the client failed for good.
    """

    def __init__(self, client: MarketClient) -> None:
        self._client = client

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ServerEvent:
        client = self._client
        while True:
            if client._queue:
                return client._queue.popleft()
            if client._fatal is not None:
                raise client._fatal
            if client._closed:
                raise StopAsyncIteration
            client._queued.clear()
            await client._queued.wait()


def _events_of(frame: Any) -> list[Any]:
    """The events a Market frame carries: a `batch`'s, or the frame itself (nothing from a
    malformed batch)."""
    if not (isinstance(frame, dict) and frame.get("type") == "batch"):
        return [frame]
    events = frame.get("events")
    return events if isinstance(events, list) else []


class MarketClient:
    """An algo session. Create with `await MarketClient.connect(...)`; close with `close()`
    or `async with`."""

    def __init__(self, manager_url: str | Callable[[], str], api_token: str, *,
                 account: str | None = None, policy: ReconnectPolicy | None = None,
                 request_timeout_s: float = 10.0, max_queued_events: int = 100_000,
                 give_up_after_s: float | None = None, trader_tag: str | None = None) -> None:
        """Prefer `MarketClient.connect`, which also opens the session."""
        self._manager_url = manager_url
        self.account = account
        self.trader_tag = trader_tag
        """The session's trader tag (fixed for the session's life; sent on every resume)."""
        self.customer: str | None = None
        self.session_id: str | None = None
        self.ws_url: str | None = None
        self.last_seq = 0
        """Seq of the last sequenced event processed (order events, signal answers, fired
        exits share the session's counter); presented on resume."""
        self.reconnects = 0
        self.dropped_market_events = 0
        """Market events dropped because `events()` was not read fast enough."""
        self.policy = policy or ReconnectPolicy(initial_s=0.1, maximum_s=5.0)
        self.request_timeout_s = request_timeout_s
        self.max_queued_events = max_queued_events
        self.give_up_after_s = give_up_after_s
        self._api_token = api_token
        self._orders = OrderTracker()
        self._subs: dict[StreamKey, dict[str, Any]] = {}
        self._pending: dict[str, _Pending] = {}
        self._deferred: list[dict[str, Any]] = []
        # signal_id → (frame, answer): re-sent after a reconnect until answered (a signal_id
        # is the idempotency key, so a second send changes nothing).
        self._signals: dict[str, tuple[dict[str, Any], asyncio.Future[Any]]] = {}
        # (kind, signal_id) of the signal answers and exits already in `events()`: the answer
        # to a re-sent signal repeats the first one without a seq, and is not an event again.
        self._signal_events: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._queue: deque[ServerEvent] = deque()
        self._queued = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._refs = itertools.count(1)
        self._cid_prefix = secrets.token_hex(4)
        self._cids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._grant: SessionGrant | None = None
        self._hint: Reconnect | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._fatal: ClientError | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def manager_url(self) -> str:
        """The MarketManager's URL: as given, or as the callable given answers now. Raises
        `ConnectionLost` (retried on a reconnect) when the callable cannot answer."""
        source = self._manager_url
        if isinstance(source, str):
            return source
        try:
            return source()
        except Exception as exc:  # e.g. the URL file is being rewritten
            raise ConnectionLost(f"MarketManager URL unknown: {exc!r}") from exc

    @classmethod
    async def connect(cls, manager_url: str | Callable[[], str], api_token: str,
                      account: str | None = None, *,
                      policy: ReconnectPolicy | None = None, request_timeout_s: float = 10.0,
                      max_queued_events: int = 100_000, give_up_after_s: float | None = None,
                      session_id: str | None = None,
                      resume_from_seq: int | None = None,
                      trader_tag: str | None = None) -> MarketClient:
        """Open a session through the MarketManager at `manager_url` with an algo API token.
        `manager_url` may be a callable answering the URL: it is asked again before every
        reconnection, so a MarketManager that moved (e.g. a URL file it rewrites) is found.

        `account` defaults to the customer's first account. `session_id` resumes an existing
        session (e.g. after the algo process restarted): the server replays the session's
        sequenced events — order events, signal answers, fired exits — after
        `resume_from_seq` (the `last_seq` the algo processed before; default 0, everything).
        `trader_tag` tags the session: the account's risk limits for that tag
        (`accounts.<name>.risk.trader_tags`) apply to its orders and signals; it is bound to
        the session (a resume must give the same tag). Reconnection after a drop is
        automatic; `give_up_after_s` bounds it (default: never give up).
        Raises `AuthError` (token refused, account not allowed), `RequestFailed` (request
        refused), `ConnectionLost` (platform unreachable or no Market worker available).
        """
        client = cls(manager_url, api_token, account=account, policy=policy,
                     request_timeout_s=request_timeout_s, max_queued_events=max_queued_events,
                     give_up_after_s=give_up_after_s, trader_tag=trader_tag)
        client.session_id = session_id
        if resume_from_seq is not None:
            if session_id is None:
                raise ValueError("resume_from_seq needs the session_id of the session to resume")
            if resume_from_seq < 0:
                raise ValueError("resume_from_seq must be 0 or more")
            client.last_seq = resume_from_seq
        try:
            await client._open(resume=session_id is not None)
        except _Reattach as exc:
            await client.close()
            raise ConnectionLost(str(exc)) from exc
        except BaseException:
            await client.close()
            raise
        client._supervisor = asyncio.create_task(client._supervise(),
                                                 name=f"market-client:{client.session_id}")
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session's connection. Waiting handles and requests raise
        `ConnectionLost`; `events()` ends after the events already received. Idempotent."""
        if self._closed:
            return
        self._closed = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        await self._drop_ws(1000, b"client closed")
        if self._http is not None:
            await self._http.close()
        self._abandon(ConnectionLost("the client was closed"), fatal=False)

    @property
    def connected(self) -> bool:
        """True while a Market connection is open (it may be briefly False during a resume)."""
        return self._ws is not None and not self._ws.closed

    @property
    def orders(self) -> dict[str, OrderHandle]:
        """Every order of this session seen by this client, by client_order_id."""
        return dict(self._orders.handles)

    def order(self, client_order_id: str) -> OrderHandle | None:
        return self._orders.handles.get(client_order_id)

    def events(self) -> EventStream:
        """The session's events as typed `protocol` models: market data (`Ticker`, `Trade`,
        `BookSnapshot`, `BookDelta`, `Candle`), order events (`OrderAccepted`, `OrderFilled`…),
        `SignalAccepted` / `SignalRejected` and `ExitFired` — all of these each once, in seq
        order, including those missed while away, which come with the resume — `Fill`,
        answers (`PositionsSnapshot`, `BalancesSnapshot`, `OpenOrders`) and `Error`s. Control
        frames (welcome, acks, pings) are handled internally."""
        return EventStream(self)

    # ------------------------------------------------------------------ market data

    async def subscribe(self, instrument: str, channel: str, depth: int | None = None,
                        interval: str | None = None, *, timeout: float | None = None) -> None:
        """Start a stream (`ticker`, `trades`, `book` with `depth`, `candles` with
        `interval`) and wait for the server to confirm it. The subscription is restored
        after every reconnect. Raises `RequestFailed` if refused (e.g. unknown_instrument)."""
        frame = self._validated({"type": "subscribe", "instrument": instrument,
                                 "channel": _wire(channel), "depth": depth,
                                 "interval": _wire(interval)})
        key = _key(instrument, channel, depth, interval)
        self._subs[key] = frame
        try:
            await self._request(frame, "subscribed", timeout, key=key)
        except RequestFailed:
            self._subs.pop(key, None)
            raise

    async def unsubscribe(self, instrument: str, channel: str, depth: int | None = None,
                          interval: str | None = None, *, timeout: float | None = None) -> None:
        """Stop a stream (a book stream of any depth if `depth` is omitted) and wait for the
        confirmation."""
        wanted = _key(instrument, channel, depth, interval)
        keys = [k for k in self._subs if k == wanted or (
            depth is None and (k[0], k[1], k[3]) == (wanted[0], wanted[1], wanted[3]))]
        frames = [self._subs.pop(k) for k in keys] or [self._validated(
            {"type": "subscribe", "instrument": instrument, "channel": _wire(channel),
             "depth": depth, "interval": _wire(interval)})]
        for frame in frames:
            await self._request({**frame, "type": "unsubscribe"}, "unsubscribed", timeout)

    # ------------------------------------------------------------------ orders

    def new_client_order_id(self) -> str:
        """A fresh, unique client_order_id."""
        return f"tf-{self._cid_prefix}-{next(self._cids)}"

    async def place_order(self, instrument: str, side: Side | str, qty: DecimalLike,
                          price: DecimalLike | None = None, *, order_type: str | None = None,
                          time_in_force: str = "GTC", client_order_id: str | None = None
                          ) -> OrderHandle:
        """Send an order and return its handle at once (await `handle.accepted()` /
        `handle.filled()` / `handle.done()` for the outcome).

        `order_type` defaults to "limit" with a price, "market" without. `client_order_id`
        is generated when omitted; placing again with the same id never creates a second
        order (the handle is returned and the server answers with the order's state).
        Raises `OrderRejected` at once for an order the protocol refuses (missing price,
        negative qty, float price…), naming the field.
        """
        cid = client_order_id or self.new_client_order_id()
        if self.account is None:
            raise ConnectionLost("not connected: no account yet")
        frame: dict[str, Any] = {
            "type": "new_order", "client_order_id": cid, "account": self.account,
            "instrument": instrument, "side": _wire(side),
            "order_type": order_type or ("limit" if price is not None else "market"),
            "qty": _wire(qty), "price": _wire(price), "time_in_force": _wire(time_in_force)}
        frame = {k: v for k, v in frame.items() if v is not None}
        try:
            request = parse_client_message(frame)
        except ProtocolError as exc:
            raise OrderRejected(exc.code.value, exc.message, client_order_id=cid,
                                field=exc.field) from exc
        handle = self._orders.add(request)  # type: ignore[arg-type]
        await self._send(request.model_dump(mode="json", exclude_none=True))
        return handle

    async def cancel_order(self, client_order_id: str) -> OrderHandle | None:
        """Ask to cancel an order; returns its handle (await `handle.done()`). A refusal
        (e.g. already filled) lands in `handle.last_error` and in `events()`."""
        return await self._amend({"type": "cancel_order", "client_order_id": client_order_id,
                                  "account": self.account})

    async def modify_order(self, client_order_id: str, *, qty: DecimalLike | None = None,
                           price: DecimalLike | None = None) -> OrderHandle | None:
        """Ask to change an open order's total qty and/or price; returns its handle."""
        return await self._amend({"type": "modify_order", "client_order_id": client_order_id,
                                  "account": self.account, "qty": _wire(qty),
                                  "price": _wire(price)})

    async def _amend(self, frame: dict[str, Any]) -> OrderHandle | None:
        frame = self._validated(frame)
        handle = self._orders.handles.get(frame["client_order_id"])
        if handle is None:  # not an order of this client: sent when connected, once
            if not await self._send(frame):
                self._deferred.append(frame)
            return None
        handle.amendments_in_flight += 1
        handle.unconfirmed[frame["type"]] = frame
        await self._send(frame)  # else sent by `_restore` with the order's other amendments
        return handle

    async def positions(self, timeout: float | None = None) -> PositionsSnapshot:
        """The account's positions now, one `Position` per instrument traded: `qty` (signed),
        `avg_price` of the open quantity, `realized_pnl` and `unrealized_pnl` (quote
        currency, exact decimals; unrealized is None without a market price) and `fees` per
        currency, as the account's position manager holds them (checked against the venue
        after every reconnect). Like every query, asked again while the account's Broker is
        unavailable for a moment (a failover), until `timeout`."""
        answer: PositionsSnapshot = await self._query(
            {"type": "get_positions", "account": self.account}, "positions", timeout)
        return answer

    async def balances(self, timeout: float | None = None) -> BalancesSnapshot:
        """The account's cash per currency now."""
        answer: BalancesSnapshot = await self._query(
            {"type": "get_positions", "account": self.account}, "balances", timeout)
        return answer

    async def open_orders(self, timeout: float | None = None, *, session_only: bool = False
                          ) -> list[OrderSnapshot]:
        """The account's working orders now (this customer's), oldest first. With
        `session_only`, only those this session placed — also before a restart, when the
        session is the same (a `trader_tag` session, or one resumed by `session_id`)."""
        answer: OpenOrders = await self._query(
            {"type": "get_open_orders", "account": self.account,
             "session_only": session_only}, "open_orders", timeout)
        return answer.orders

    def adopt(self, order: OrderSnapshot) -> OrderHandle:
        """Track a working order of this session that this client did not place, e.g. one
        left by the algo's previous run (from `open_orders(session_only=True)`): its handle,
        kept up to date by the session's events from now on, and in `orders`."""
        if order.account != self.account:
            raise ValueError(f"order {order.client_order_id} is of account {order.account}, "
                             f"this session trades {self.account}")
        return self._orders.apply(order, origin="adopted")

    # ------------------------------------------------------------------ signals

    def new_signal_id(self) -> str:
        """A fresh, unique signal_id."""
        return f"tfs-{self._cid_prefix}-{next(self._cids)}"

    async def send_signal(self, instrument: str, *, direction: str | None = None,
                          target_qty: DecimalLike | None = None, qty: DecimalLike | None = None,
                          risk_fraction: DecimalLike | None = None,
                          entry_price: DecimalLike | None = None,
                          stop_loss: DecimalLike | None = None,
                          take_profit: DecimalLike | None = None,
                          trailing_distance: DecimalLike | None = None,
                          time_exit_at: int | None = None, expires_at: int | None = None,
                          signal_id: str | None = None, timeout: float | None = None
                          ) -> SignalAccepted | SignalRejected:
        """Send a signal (`protocol.signals`) and wait for the position manager's answer:
        `SignalAccepted` (its entry order, if any, is placed; its exits are held on the
        server and fire even while this algo is away) or `SignalRejected` (code + sentence).
        `exit_fired` arrives later in `events()`. Re-sending a `signal_id` changes nothing and
        answers with the first outcome. Raises `RequestFailed` for a signal the protocol
        refuses (naming the field) and `RequestTimeout` without an answer in time."""
        if self.account is None:
            raise ConnectionLost("not connected: no account yet")
        sid = signal_id or self.new_signal_id()
        frame = self._validated({
            "type": "signal", "signal_id": sid, "account": self.account,
            "instrument": instrument, "direction": _wire(direction),
            "target_qty": _wire(target_qty), "qty": _wire(qty),
            "risk_fraction": _wire(risk_fraction), "entry_price": _wire(entry_price),
            "stop_loss": _wire(stop_loss), "take_profit": _wire(take_profit),
            "trailing_distance": _wire(trailing_distance), "time_exit_at": time_exit_at,
            "expires_at": expires_at})
        self._check_usable()
        previous = self._signals.get(sid)
        future = previous[1] if previous is not None else \
            asyncio.get_running_loop().create_future()
        self._signals[sid] = (frame, future)
        try:
            await self._send(frame)
            async with asyncio.timeout(timeout or self.request_timeout_s):
                answer: SignalAccepted | SignalRejected = await asyncio.shield(future)
                return answer
        except TimeoutError as exc:
            raise RequestTimeout(f"no answer to signal {sid} within "
                                 f"{timeout or self.request_timeout_s}s") from exc
        finally:
            if future.done():
                self._signals.pop(sid, None)

    # ------------------------------------------------------------------ requests

    def _validated(self, frame: dict[str, Any]) -> dict[str, Any]:
        frame = {k: v for k, v in frame.items() if v is not None}
        try:
            message = parse_client_message(frame)
        except ProtocolError as exc:
            raise RequestFailed(exc.code.value, exc.message, field=exc.field) from exc
        return message.model_dump(mode="json", exclude_none=True)

    async def _request(self, frame: dict[str, Any], expect: str, timeout: float | None,
                       key: StreamKey | None = None) -> Any:
        """Send a frame carrying a fresh ref; wait for the answer of type `expect` with that
        ref. Re-sent after a reconnect until answered."""
        self._check_usable()
        ref = f"r{next(self._refs)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = _Pending({**frame, "ref": ref}, expect, future, key)
        self._pending[ref] = pending
        try:
            await self._send(pending.frame)
            async with asyncio.timeout(timeout or self.request_timeout_s):
                return await future
        except TimeoutError as exc:
            raise RequestTimeout(f"no {expect} answer within "
                                 f"{timeout or self.request_timeout_s}s") from exc
        finally:
            self._pending.pop(ref, None)

    async def _query(self, frame: dict[str, Any], expect: str, timeout: float | None) -> Any:
        """A read-only request, asked again while the Market answers `unavailable` (the
        account's Broker link is down for a moment: a failover, a network blip) until the
        request's timeout; then the last refusal is raised."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.request_timeout_s)
        delay = 0.05
        while True:
            try:
                return await self._request(frame, expect, max(deadline - loop.time(), 0.001))
            except RequestFailed as exc:
                if exc.code != ErrorCode.UNAVAILABLE.value or loop.time() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _check_usable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise ConnectionLost("the client was closed")

    async def _send(self, frame: dict[str, Any]) -> bool:
        """Write a frame if connected; False if not (the caller's state makes it re-sent)."""
        self._check_usable()
        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            async with self._send_lock:
                await ws.send_str(orjson.dumps(frame).decode())
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        return True

    # ------------------------------------------------------------------ connection

    async def _open(self, *, resume: bool) -> None:
        """Ask the MarketManager for the session (new or resumed) and attach to its Market."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        grant = await request_session(self._http, self.manager_url, self._api_token,
                                      account=self.account, session_id=self.session_id,
                                      trader_tag=self.trader_tag,
                                      timeout_s=self.request_timeout_s)
        await self._attach(grant, grant.ws_url, resume=resume)

    async def _attach(self, grant: SessionGrant, ws_url: str, *, resume: bool) -> None:
        assert self._http is not None
        try:
            ws = await self._http.ws_connect(
                ws_url, headers={"Authorization": f"Bearer {grant.session_token}"},
                max_msg_size=0, heartbeat=20.0)
        except aiohttp.WSServerHandshakeError as exc:
            raise _Reattach(f"Market refused the connection ({exc.status})") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Reattach(f"Market unreachable: {exc!r}") from exc
        hello: dict[str, Any] = {"type": "hello", "session_id": grant.session_id}
        if resume:
            hello["resume_from_seq"] = self.last_seq
        try:
            await ws.send_str(orjson.dumps(hello).decode())
            welcome, after = await self._welcome(ws)
        except BaseException:
            await ws.close()
            raise
        self._grant, self._ws = grant, ws
        self.session_id, self.account = grant.session_id, grant.account
        self.customer, self.ws_url = grant.customer, ws_url
        log.info("session %s attached to %s (resumed=%s, last_seq=%s)", grant.session_id,
                 ws_url, welcome.resumed, welcome.last_seq)
        for item in after:
            await self._on_event(item)
        await self._restore(welcome)

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse
                       ) -> tuple[Welcome, list[Any]]:
        """The Market's welcome, and the events that came in the same frame after it (a
        Market that still holds the session's streams sends their snapshots with it)."""
        async with asyncio.timeout(self.request_timeout_s):
            while True:
                msg = await ws.receive()
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    raise _Reattach(f"Market closed before welcome ({ws.close_code})")
                try:
                    data = decode(msg.data)
                except CodecError:
                    raise _Reattach("undecodable frame from the Market before welcome") \
                        from None
                items = _events_of(data)
                for index, item in enumerate(items):
                    try:
                        event = parse_server_message(item)
                    except (ValidationError, TypeError):
                        continue  # an event this SDK does not know; the welcome may follow
                    if isinstance(event, Welcome):
                        return event, items[index + 1:]
                    if isinstance(event, Error):
                        if event.code.value in ("unauthorized", "forbidden"):
                            raise AuthError(f"{event.code.value}: {event.message}")
                        raise _Reattach(f"Market refused the session: {event.code.value}")

    async def _restore(self, welcome: Welcome) -> None:
        """After (re)attaching: streams the Market did not restore, requests still waiting,
        orders never answered, cancels/modifies made while away."""
        restored = {_key(s.instrument, s.channel, s.depth, s.interval)
                    for s in welcome.subscriptions}
        waiting = {p.key: p for p in self._pending.values() if p.key is not None}
        for key, frame in list(self._subs.items()):
            if key in restored:
                continue
            pending = waiting.get(key)
            await self._send(pending.frame if pending else frame)
        for pending in list(self._pending.values()):
            if pending.key is None:
                await self._send(pending.frame)
        for handle in self._orders.unanswered():
            await self._send(handle.request.model_dump(mode="json", exclude_none=True))
        for handle in list(self._orders.handles.values()):
            if handle.unconfirmed and not handle.is_done:
                for kind in ("modify_order", "cancel_order"):  # a cancel goes last
                    if kind in handle.unconfirmed:
                        await self._send(handle.unconfirmed[kind])
        for frame, _ in list(self._signals.values()):
            await self._send(frame)
        deferred, self._deferred = self._deferred, []
        for frame in deferred:
            if not await self._send(frame):
                self._deferred.append(frame)

    async def _supervise(self) -> None:
        """Read the connection; when it drops, resume the session through the MarketManager."""
        try:
            while not self._closed:
                ws = self._ws
                if ws is not None:
                    await self._read(ws)
                if self._closed:
                    return
                await self._drop_ws(1000, b"reconnecting")
                await self._reconnect()
        except ClientError as exc:
            log.error("session %s lost for good: %s", self.session_id, exc)
            self._abandon(exc, fatal=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must surface, not hang the algo
            log.exception("market client failed")
            self._abandon(ConnectionLost(f"client failure: {exc!r}"), fatal=True)

    async def _reconnect(self) -> None:
        started = time.monotonic()
        hint, self._hint = self._hint, None
        if hint is not None and hint.retry_after_ms:
            await asyncio.sleep(hint.retry_after_ms / 1000)
        while not self._closed:
            try:
                if hint is not None and hint.url and self._grant is not None:
                    url, hint = hint.url, None
                    await self._attach(self._grant, url, resume=True)
                else:
                    await self._open(resume=True)
                self.policy.reset()
                self.reconnects += 1
                return
            except (_Reattach, ConnectionLost, CodecError, ValidationError, TimeoutError) as exc:
                log.info("resume of session %s failed, retrying: %s", self.session_id, exc)
            if self.give_up_after_s is not None and \
                    time.monotonic() - started > self.give_up_after_s:
                raise ConnectionLost(f"could not resume session {self.session_id} within "
                                     f"{self.give_up_after_s}s")
            await asyncio.sleep(self.policy.next_delay())

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Process frames until the connection ends. Raises `ConnectionLost` if another
        connection of this session took over (no point resuming then)."""
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                if msg.data == 1000 and _CLOSE_SUPERSEDED in str(msg.extra or ""):
                    raise ConnectionLost("this session was taken over by another connection")
                break
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            try:
                data = decode(msg.data)
            except CodecError:
                log.warning("undecodable frame from the Market dropped")
                continue
            for item in _events_of(data):
                await self._on_event(item)
            if self._hint is not None:
                break
        log.info("connection to the Market ended (%s); resuming session %s", ws.close_code,
                 self.session_id)

    async def _on_event(self, item: Any) -> None:
        try:
            event = parse_server_message(item)
        except (ValidationError, TypeError) as exc:
            # A newer server may send events this SDK does not know; skip them. But an
            # answer to one of our requests fails that request now, instead of at its timeout.
            pending = self._pending.get(item.get("ref") or "") if isinstance(item, dict) \
                else None
            if pending is not None and not pending.future.done():
                log.warning("unreadable answer to %s: %s", pending.expect, str(exc)[:200])
                pending.future.set_exception(RequestFailed(
                    ErrorCode.INTERNAL.value,
                    f"the server's {pending.expect} answer could not be read: "
                    f"{str(exc)[:200]}", ref=pending.frame.get("ref")))
            else:
                log.debug("unrecognised event skipped: %s", str(exc)[:200])
            return
        if isinstance(event, _MARKET_EVENT_TYPES):
            self._enqueue(event, droppable=True)
        elif isinstance(event, _ORDER_EVENT_TYPES):
            if not self._take_seq(event.seq):
                return  # already processed (a replay overlapping what we had)
            self._orders.apply(event)
            self._enqueue(event)
        elif isinstance(event, Fill):
            self._orders.fill(event)
            self._enqueue(event)
        elif isinstance(event, Error):
            pending = self._pending.get(event.ref or "")
            if pending is not None and not pending.future.done():
                pending.future.set_exception(RequestFailed(
                    event.code.value, event.message, field=event.field, ref=event.ref))
            if event.client_order_id:
                self._orders.error(event)
            self._enqueue(event)
        elif isinstance(event, (Subscribed, Unsubscribed)):
            if isinstance(event, Subscribed):
                self._learn_stream(event)
            self._answer(event.ref, event.type, event)
        elif isinstance(event, (PositionsSnapshot, BalancesSnapshot, OpenOrders)):
            self._answer(event.ref, event.type, event)
            self._enqueue(event)
        elif isinstance(event, (SignalAccepted, SignalRejected, ExitFired)):
            if not self._take_seq(event.seq):
                return
            if not isinstance(event, ExitFired):
                waiting = self._signals.get(event.signal_id)
                if waiting is not None and not waiting[1].done():
                    waiting[1].set_result(event)
                if event.seq is None:
                    # The answer to a signal sent again: it answers `send_signal`, but the
                    # event is the journaled answer, which comes with its seq (live, or in
                    # the replay of a resume), so events() keeps its seq order.
                    return
            key = ("exit_fired" if isinstance(event, ExitFired) else "signal_answer",
                   event.signal_id)
            if key in self._signal_events:
                return
            self._signal_events[key] = None
            if len(self._signal_events) > _SIGNAL_EVENTS_KEPT:
                self._signal_events.popitem(last=False)
            self._enqueue(event)
        elif isinstance(event, Reconnect):
            log.info("the Market asks to reconnect (%s)", event.reason.value)
            self._hint = event
        elif isinstance(event, Ping):
            await self._send({"type": "pong", "ts": event.ts, "ref": event.ref}
                             if event.ts is not None or event.ref is not None
                             else {"type": "pong"})

    def _take_seq(self, seq: int | None) -> bool:
        """Advance `last_seq` past a sequenced event; False if it was processed already.
        Unsequenced events (answers) always pass."""
        if seq is None:
            return True
        if seq <= self.last_seq:
            return False
        self.last_seq = seq
        return True

    def _answer(self, ref: str | None, kind: str, event: Any) -> None:
        pending = self._pending.get(ref or "")
        if pending is not None and pending.expect == kind and not pending.future.done():
            pending.future.set_result(event)

    def _learn_stream(self, event: Subscribed) -> None:
        """Keep the stream under the key the server echoed (it fills in a default book
        depth), so a resume recognises it among the restored ones."""
        pending = self._pending.get(event.ref or "")
        echoed = _key(event.instrument, event.channel, event.depth, event.interval)
        if pending is None or pending.key is None or pending.key == echoed:
            return
        frame = self._subs.pop(pending.key, None)
        if frame is not None:
            self._subs[echoed] = {**frame, "depth": event.depth} if event.depth else frame

    def _enqueue(self, event: ServerEvent, droppable: bool = False) -> None:
        if droppable and len(self._queue) >= self.max_queued_events:
            self.dropped_market_events += 1
            return
        self._queue.append(event)
        self._queued.set()

    async def _drop_ws(self, code: int, message: bytes) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=code, message=message), 2)

    def _abandon(self, exc: ClientError, *, fatal: bool) -> None:
        """Fail everything waiting with `exc`; if `fatal`, `events()` raises it at its end."""
        if fatal and self._fatal is None:
            self._fatal = exc
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._orders.lose_all(exc)
        self._queued.set()

    def __repr__(self) -> str:
        return (f"MarketClient(session={self.session_id!r}, account={self.account!r}, "
                f"connected={self.connected}, last_seq={self.last_seq})")

