"""`KrakenSpotAdapter`: one account's live session with Kraken spot (WebSocket v2 + REST).

Two WebSockets and a REST client:

* the **public** socket (``ws.kraken.com/v2``) carries the ``instrument`` channel (pairs,
  increments, precisions) and every market-data stream. :class:`~.market.PublicFeed`
  turns its frames into ``protocol`` events and asks for a resubscription when a book
  checksum fails; the fresh snapshot is published as a new ``book_snapshot``.
* the **private** socket (``ws-auth.kraken.com/v2``, authorised by a token from the
  signed REST ``GetWebSocketsToken``) carries ``executions`` and the order requests
  ``add_order`` / ``amend_order`` / ``cancel_order``. :class:`~.orders.OrderTracker` turns
  execution reports into order events with fills. A gap in the executions ``sequence``,
  or a reconnect, triggers a reconciliation from REST (``OpenOrders``, ``QueryOrders``,
  ``TradesHistory``) whose results go through the same tracker, so missed fills and
  closes still reach ``events()`` -- each fill once.
* **REST** also answers ``open_orders()``, ``fills_since()``, ``balances()``, and takes
  cancels while the private socket is down (cancels must get through).

Rate limits: every add and amend first asks the local mirror of Kraken's per-pair counter
(:class:`~.ratelimit.OrderRateLimiter`) and is refused here, with the numbers, before the
venue would refuse it; cancels always pass (a reserve is kept for them).

Each socket has one supervising task that connects, sets the socket up, reads it until it
ends, emits ``ConnectionChanged`` and reconnects after the delay of
:func:`~.reconnect.reconnect_delay` (backoff with jitter, a maintenance floor and an
attempt budget shared by both sockets, under Cloudflare's ~150 attempts / 10 min). After a
public reconnect every stream is subscribed again and starts with a fresh snapshot.

Tasks: ``kraken-public:<account>``, ``kraken-private:<account>`` (each owning its reader
task) and ``kraken-resync:<account>``; all are cancelled, with a timeout, by ``close()``.
Every aiohttp/JSON/Kraken failure is converted to an ``AdapterError`` at this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import structlog
from pydantic import ValidationError

from protocol.errors import ErrorCode
from protocol.market import CandleInterval, Channel, InstrumentSpec
from protocol.orders import (
    BalancesSnapshot,
    Fill,
    NewOrder,
    OrderEvent,
    OrderSnapshot,
    OrderType,
)
from workers.broker.adapters.base import (
    Adapter,
    AdapterError,
    AdapterEvent,
    ConnectionChanged,
    FatalAdapterError,
    OrderAck,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.kraken import commands
from workers.broker.adapters.kraken.config import KrakenSpotConfig
from workers.broker.adapters.kraken.errors import MalformedMessage, UnsupportedSymbol
from workers.broker.adapters.kraken.instruments import (
    InstrumentTable,
    canonical_asset,
    instruments_from_config,
    instruments_from_frame,
)
from workers.broker.adapters.kraken.market import FeedStats, PublicFeed, StreamKey
from workers.broker.adapters.kraken.orders import (
    OrderTracker,
    RestTrade,
    fill_from_rest,
    foreign_client_order_id,
    rest_order_reports,
    snapshot_from_rest,
)
from workers.broker.adapters.kraken.ratelimit import Admission, OrderRateLimiter, Tier
from workers.broker.adapters.kraken.reconnect import (
    AttemptLog,
    is_maintenance_close,
    reconnect_delay,
)
from workers.broker.adapters.kraken.rejections import error_for_kraken
from workers.broker.adapters.kraken.rest import KrakenRestClient
from workers.broker.adapters.kraken.schemas import (
    ExecutionsMessage,
    MethodResponse,
    SpotFrame,
    UnknownFrame,
    to_decimal,
)
from workers.broker.adapters.kraken.sequence import (
    ExecutionsSequenceTracker,
    SequenceGap,
    SequenceRepeat,
)
from workers.broker.adapters.kraken.symbols import to_v2
from workers.broker.adapters.kraken.wire import rfc3339_ns
from workers.broker.adapters.kraken.ws import KrakenSocket, SocketClosed
from workers.broker.adapters.queue import EventQueue

log = structlog.get_logger(__name__)

_STOP_TIMEOUT_S = 5.0
_RESYNC_ATTEMPTS = 5
_TIERS_BY_MAXRATECOUNT = {60: Tier.STARTER, 125: Tier.INTERMEDIATE, 180: Tier.PRO}

SetupStep = Callable[[KrakenSocket, bool], Awaitable[None]]
FrameHandler = Callable[[SpotFrame], Awaitable[None]]


@dataclass(slots=True)
class _Link:
    """One supervised socket and its history."""

    name: str
    url: str
    socket: KrakenSocket | None = None
    task: asyncio.Task[None] | None = None
    ready: asyncio.Future[None] | None = None
    up: bool = False
    connections: int = 0
    failures: int = 0
    last_close: tuple[int | None, str | None] = (None, None)


@dataclass(slots=True)
class AdapterStats:
    """What the session had to repair, for logs, metrics and tests."""

    public_connections: int = 0
    private_connections: int = 0
    executions_gaps: int = 0
    order_resyncs: int = 0
    rate_refusals: int = 0
    feed: FeedStats = field(default_factory=FeedStats)


class KrakenSpotAdapter(Adapter):
    """The `Adapter` contract over Kraken spot (see the module docstring).

    ``clock`` (monotonic seconds) drives the rate counter and the reconnect budget,
    ``wall_ns`` stamps events that carry no venue time; both are injectable for tests.
    """

    venue = "kraken"

    def __init__(
        self,
        config: KrakenSpotConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.account = config.account
        self._clock = clock
        self._wall_ns = wall_ns
        self._rng = rng or random.Random()
        self._log = log.bind(account=config.account, venue=self.venue)
        self._policy = config.reconnect.policy()
        self._attempts = AttemptLog(self._policy.window_s)
        self._table: InstrumentTable = instruments_from_config(config.instruments)
        self._feed = PublicFeed(
            precisions=self._table.precisions, default_depth=config.default_book_depth
        )
        self._orders = OrderTracker(config.account)
        self._executions = ExecutionsSequenceTracker()
        self._limiter = OrderRateLimiter(config.rate_tier, reserve=config.rate_reserve)
        self._session: aiohttp.ClientSession | None = None
        self._rest: KrakenRestClient | None = None
        self._token: str | None = None
        self._public = _Link("public", config.ws_public_url)
        self._private = _Link("private", config.ws_private_url)
        self._instrument_frame: asyncio.Future[dict[str, Any]] | None = None
        self._resync_wanted = asyncio.Event()
        self._resync_task: asyncio.Task[None] | None = None
        self._queue = EventQueue(self.config.max_queue)
        self._fatal: FatalAdapterError | None = None
        self._closed = False
        self.stats = AdapterStats(feed=self._feed.stats)

    # ------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """True while both sockets are up."""
        return self._public.up and self._private.up

    @property
    def feed(self) -> PublicFeed:
        """The market-data core (its books and counters), for diagnostics."""
        return self._feed

    @property
    def rate_limiter(self) -> OrderRateLimiter:
        """The local mirror of Kraken's rate counters."""
        return self._limiter

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        if self._closed:
            raise FatalAdapterError("this adapter was closed; create a new one")
        if self._fatal is not None:
            raise self._fatal
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession()
        self._rest = KrakenRestClient(
            self._session,
            self.config.rest_url,
            self.config.api_key,
            self.config.api_secret,
            timeout_s=self.config.request_timeout_s,
        )
        loop = asyncio.get_running_loop()
        self._public.failures = self._private.failures = 0
        self._public.ready = loop.create_future()
        self._private.ready = loop.create_future()
        self._public.task = asyncio.create_task(
            self._supervise(self._public, self._setup_public, self._on_public),
            name=f"kraken-public:{self.account}",
        )
        self._private.task = asyncio.create_task(
            self._supervise(self._private, self._setup_private, self._on_private),
            name=f"kraken-private:{self.account}",
        )
        self._resync_task = asyncio.create_task(
            self._resync_loop(), name=f"kraken-resync:{self.account}"
        )
        try:
            await asyncio.wait_for(
                asyncio.gather(self._public.ready, self._private.ready),
                self.config.connect_timeout_s,
            )
        except BaseException as exc:
            await self._shutdown()
            if isinstance(exc, TimeoutError):
                raise RetryableAdapterError(
                    f"connect: Kraken sockets not up within {self.config.connect_timeout_s}s "
                    "(raise connect_timeout_s if the network is slow)"
                ) from exc
            raise
        self._log.info("kraken_connected", pairs=len(self._table.specs))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._shutdown()
        self._queue.close()

    async def _shutdown(self) -> None:
        tasks = [
            task
            for task in (self._public.task, self._private.task, self._resync_task)
            if task is not None
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT_S)
            for task in pending:
                self._log.warning("kraken_task_did_not_stop", task=task.get_name())
        self._public.task = self._private.task = self._resync_task = None
        for link in (self._public, self._private):
            ready = link.ready
            if ready is not None and not ready.done():
                ready.cancel()
            elif ready is not None and not ready.cancelled():
                ready.exception()  # retrieved: connect() already reported the first failure
            if link.socket is not None:
                await link.socket.close()
                link.socket = None
            link.up = False
        session, self._session = self._session, None
        self._rest = None
        if session is not None:
            await session.close()

    async def events(self) -> AsyncIterator[AdapterEvent]:
        async for event in self._queue.drain():
            yield event

    async def _push(self, event: AdapterEvent) -> None:
        # Waits while the Broker lags: the socket stops being read and TCP pushes back.
        await self._queue.put((event,))

    # ------------------------------------------------------------ market data

    async def subscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        """As the contract says. While the public socket is down the stream is recorded and
        starts, with its snapshot, when the socket is back. Raises
        ``OrderRejectedError(invalid_field | unknown_instrument | conflict)``."""
        self._usable()
        try:
            key = StreamKey.of(
                instrument, channel, depth, interval, default_depth=self.config.default_book_depth
            )
        except ValueError as exc:
            raise OrderRejectedError(ErrorCode.INVALID_FIELD, str(exc)) from exc
        if instrument not in self._table.specs:
            raise OrderRejectedError(
                ErrorCode.UNKNOWN_INSTRUMENT, f"Kraken does not list {instrument!r}"
            )
        try:
            requests = self._feed.add(key)
        except UnsupportedSymbol as exc:
            raise OrderRejectedError(ErrorCode.UNKNOWN_INSTRUMENT, str(exc)) from exc
        except ValueError as exc:
            raise OrderRejectedError(ErrorCode.CONFLICT, str(exc)) from exc
        socket = self._public.socket if self._public.up else None
        if socket is None:
            return
        for request in requests:
            try:
                responses = await socket.request(request)
            except SocketClosed:
                return  # subscribed again when the socket is back
            except TimeoutError as exc:
                self._feed.remove(key)
                raise RetryableAdapterError(
                    f"subscribe {instrument} {key.channel}: no answer within "
                    f"{self.config.request_timeout_s}s"
                ) from exc
            refused = [response for response in responses if response.success is not True]
            if refused:
                self._feed.remove(key)
                raise OrderRejectedError(
                    ErrorCode.INVALID_FIELD,
                    f"Kraken refused {key.channel} for {instrument}: {refused[0].error}",
                )

    async def unsubscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        try:
            key = StreamKey.of(
                instrument, channel, depth, interval, default_depth=self.config.default_book_depth
            )
            requests = self._feed.remove(key)
        except (ValueError, UnsupportedSymbol):
            return
        socket = self._public.socket if self._public.up else None
        if socket is not None:
            with contextlib.suppress(SocketClosed):
                for request in requests:
                    await socket.send(request)

    # ------------------------------------------------------------ orders

    async def place_order(self, request: NewOrder) -> OrderAck:
        """As the contract says. Sent as ``add_order`` on the private socket with
        ``cl_ord_id`` derived from ``client_order_id`` (``commands.venue_cl_ord_id``).
        Re-sending a known ``client_order_id`` returns its ack without placing anything.
        Raises ``OrderRejectedError(rate_limited)`` locally when the pair's rate counter
        has no room, ``RetryableAdapterError`` when the private socket is down or the
        venue did not answer (re-sending the same ``client_order_id`` is then safe)."""
        self._usable()
        cid = request.client_order_id
        if request.account != self.account:
            raise OrderRejectedError(
                ErrorCode.FORBIDDEN,
                f"this session trades account {self.account!r}, not {request.account!r}",
                client_order_id=cid,
            )
        if request.instrument not in self._table.specs:
            raise OrderRejectedError(
                ErrorCode.UNKNOWN_INSTRUMENT,
                f"Kraken does not list {request.instrument!r}",
                client_order_id=cid,
            )
        existing = self._orders.find(cid)
        if existing is not None:
            if existing.order_id is not None:
                return OrderAck(cid, existing.order_id, existing.created_ns)
            waited = (self._wall_ns() - (existing.sent_ns or 0)) / 1e9
            if existing.in_flight or waited < self.config.order_outcome_timeout_s:
                raise RetryableAdapterError(
                    f"add_order {cid}: an earlier request for this client_order_id has no "
                    "outcome yet; its events will follow",
                    retry_after=1.0,
                )
        socket, token = self._private_socket()
        symbol = to_v2(request.instrument)
        venue_cl = commands.venue_cl_ord_id(cid, self.account)
        admission = self._limiter.add(symbol, venue_cl, self._clock())
        if not admission.admitted:
            raise self._rate_refusal(admission, request.instrument, "add_order", cid)
        self._orders.expect(request, venue_cl, self._wall_ns())
        frame = commands.add_order(request, symbol=symbol, cl_ord_id=venue_cl, token=token)
        try:
            (response,) = await socket.request(frame)
        except (TimeoutError, SocketClosed) as exc:
            self._orders.unanswered(cid)
            raise RetryableAdapterError(
                f"add_order {cid}: no answer from Kraken ({type(exc).__name__}); the order may "
                "exist and its events will follow; re-sending the same client_order_id is safe"
            ) from exc
        if response.success is not True:
            self._orders.refused(cid)
            raise error_for_kraken(
                response.error or "no error text",
                what=f"add_order {request.instrument}",
                client_order_id=cid,
            )
        order_id = (response.result or {}).get("order_id")
        if not isinstance(order_id, str) or not order_id:
            self._orders.unanswered(cid)
            raise RetryableAdapterError(f"add_order {cid}: Kraken's answer holds no order_id")
        self._orders.acknowledged(cid, order_id)
        return OrderAck(cid, order_id, self._venue_time(response))

    async def cancel_order(self, client_order_id: str, *, order_id: str | None = None) -> None:
        """As the contract says. Never refused by the local rate counter; sent by REST when
        the private socket is down."""
        self._usable()
        order = self._orders.find(client_order_id)
        if order is not None and order.finished:
            raise OrderRejectedError(
                ErrorCode.ORDER_NOT_CANCELLABLE,
                f"order {client_order_id} is already {order.status}",
                client_order_id=client_order_id,
            )
        order_id = order_id or (order.order_id if order is not None else None)
        venue_cl = (
            order.venue_cl_ord_id
            if order is not None and order.venue_cl_ord_id
            else commands.venue_cl_ord_id(client_order_id, self.account)
        )
        if order is not None:
            order.cancel_requested = True
            admission = self._limiter.cancel(to_v2(order.instrument), venue_cl, self._clock())
            if admission.exceeds_venue_limit:
                self._log.warning(
                    "kraken_cancel_over_rate_limit",
                    order=client_order_id,
                    counter=admission.counter,
                )
        what = f"cancel_order {client_order_id}"
        if self._private.up and self._private.socket is not None and self._token:
            frame = commands.cancel_order(
                token=self._token, order_id=order_id, cl_ord_id=None if order_id else venue_cl
            )
            try:
                responses = await self._private.socket.request(frame)
            except TimeoutError as exc:
                raise RetryableAdapterError(f"{what}: no answer from Kraken in time") from exc
            except SocketClosed:
                pass  # fall through to REST
            else:
                refused = [response for response in responses if response.success is not True]
                if refused:
                    raise error_for_kraken(
                        refused[0].error or "no error text",
                        what=what,
                        client_order_id=client_order_id,
                    )
                return
        params = commands.rest_cancel_order(
            order_id=order_id, cl_ord_id=None if order_id else venue_cl
        )
        count = await self._rest_client().cancel_order(params, client_order_id=client_order_id)
        if count == 0:
            raise OrderRejectedError(
                ErrorCode.ORDER_NOT_FOUND,
                f"{what}: Kraken cancelled nothing",
                client_order_id=client_order_id,
            )

    async def modify_order(
        self,
        client_order_id: str,
        *,
        order_id: str | None = None,
        qty: Decimal | None = None,
        price: Decimal | None = None,
    ) -> None:
        """As the contract says, by Kraken's in-place ``amend_order`` (queue priority kept
        where possible). Refused locally, like an add, when the rate counter has no room."""
        self._usable()
        if qty is None and price is None:
            raise OrderRejectedError(
                ErrorCode.INVALID_ORDER,
                "give a new qty and/or price",
                client_order_id=client_order_id,
            )
        order = self._orders.find(client_order_id)
        if order is not None and (order.finished or order.order_type is OrderType.MARKET):
            raise OrderRejectedError(
                ErrorCode.ORDER_NOT_MODIFIABLE,
                f"order {client_order_id} is {order.status} {order.order_type}",
                client_order_id=client_order_id,
            )
        socket, token = self._private_socket()
        order_id = order_id or (order.order_id if order is not None else None)
        venue_cl = (
            order.venue_cl_ord_id
            if order is not None and order.venue_cl_ord_id
            else commands.venue_cl_ord_id(client_order_id, self.account)
        )
        if order is not None:
            symbol = to_v2(order.instrument)
            admission = self._limiter.amend(symbol, venue_cl, self._clock())
            if not admission.admitted:
                raise self._rate_refusal(
                    admission, order.instrument, "amend_order", client_order_id
                )
        frame = commands.amend_order(
            token=token,
            order_id=order_id,
            cl_ord_id=None if order_id else venue_cl,
            qty=qty,
            price=price,
        )
        what = f"amend_order {client_order_id}"
        try:
            (response,) = await socket.request(frame)
        except (TimeoutError, SocketClosed) as exc:
            raise RetryableAdapterError(f"{what}: no answer from Kraken") from exc
        if response.success is not True:
            raise error_for_kraken(
                response.error or "no error text", what=what, client_order_id=client_order_id
            )

    # ------------------------------------------------------------ account state

    async def open_orders(self) -> list[OrderSnapshot]:
        rest = self._rest_client()
        now = self._wall_ns()
        snapshots = []
        for order_id, info in (await rest.open_orders()).items():
            instrument = self._instrument_of(info)
            if instrument is None:
                continue
            try:
                snapshots.append(
                    snapshot_from_rest(
                        order_id,
                        info,
                        account=self.account,
                        instrument=instrument,
                        client_order_id=self._client_id_of(order_id, info.get("cl_ord_id")),
                        now_ns=now,
                    )
                )
            except (MalformedMessage, ValueError) as exc:
                self._log.warning("kraken_open_order_unreadable", order_id=order_id, error=str(exc))
        return sorted(snapshots, key=lambda snapshot: snapshot.ts)

    async def fills_since(self, ts: int) -> list[Fill]:
        rest = self._rest_client()
        raw = await rest.trades_history(max(0.0, ts / 1e9 - 1.0))
        trades = []
        for txid, info in raw.items():
            try:
                trade = RestTrade.parse(txid, info)
            except MalformedMessage as exc:
                self._log.warning("kraken_trade_unreadable", txid=txid, error=str(exc))
                continue
            if trade.ts >= ts:
                trades.append(trade)
        unknown = sorted(
            {trade.order_id for trade in trades if self._orders.by_order_id(trade.order_id) is None}
        )
        orders = await rest.query_orders(unknown) if unknown else {}
        fills = []
        for trade in sorted(trades, key=lambda item: item.ts):
            instrument = self._table.instrument_of_rest_pair(trade.pair)
            if instrument is None:
                continue
            info = orders.get(trade.order_id) or {}
            try:
                fills.append(
                    fill_from_rest(
                        trade,
                        account=self.account,
                        instrument=instrument,
                        client_order_id=self._client_id_of(trade.order_id, info.get("cl_ord_id")),
                    )
                )
            except ValidationError as exc:  # e.g. a zero-quantity record
                self._log.warning("kraken_trade_unusable", txid=trade.txid, error=str(exc))
        return fills

    async def instruments(self) -> list[InstrumentSpec]:
        return list(self._table.specs.values())

    async def balances(self) -> BalancesSnapshot:
        raw = await self._rest_client().balance()
        cash: dict[str, Decimal] = {}
        for code, amount in raw.items():
            currency = canonical_asset(code)
            if currency is None:
                continue
            try:
                cash[currency] = cash.get(currency, Decimal(0)) + to_decimal(amount, code)
            except MalformedMessage as exc:
                raise RetryableAdapterError(f"REST Balance: {exc}") from exc
        return BalancesSnapshot(account=self.account, cash=cash, ts=self._wall_ns())

    # ------------------------------------------------------------ helpers

    def _usable(self) -> None:
        if self._closed:
            raise FatalAdapterError("this adapter was closed; create a new one")
        if self._fatal is not None:
            raise self._fatal
        if self._session is None:
            raise FatalAdapterError("the Kraken adapter is not connected; call connect() first")

    def _rest_client(self) -> KrakenRestClient:
        self._usable()
        assert self._rest is not None
        return self._rest

    def _private_socket(self) -> tuple[KrakenSocket, str]:
        socket = self._private.socket
        if not self._private.up or socket is None or self._token is None:
            raise RetryableAdapterError(
                "the private Kraken connection is down; it is being re-established", retry_after=1.0
            )
        return socket, self._token

    def _rate_refusal(
        self, admission: Admission, instrument: str, what: str, client_order_id: str
    ) -> OrderRejectedError:
        self.stats.rate_refusals += 1
        threshold = self._limiter.tier.value.threshold
        message = (
            f"{what} refused before sending: Kraken's rate counter for {instrument} is "
            f"{admission.counter:.2f}; this {admission.kind} costs {admission.cost:g}, which "
            f"would pass {admission.limit:g} ({self._limiter.tier.name.lower()} tier limit "
            f"{threshold:g} minus {self._limiter.reserve:g} kept for cancels); retry in "
            f"{admission.retry_after:.1f}s"
        )
        self._log.warning("kraken_rate_limited_locally", order=client_order_id, detail=message)
        return OrderRejectedError(ErrorCode.RATE_LIMITED, message, client_order_id=client_order_id)

    def _venue_time(self, response: MethodResponse) -> int:
        for text in (response.time_out, response.time_in):
            if text:
                with contextlib.suppress(MalformedMessage):
                    return rfc3339_ns(text)
        return self._wall_ns()

    def _instrument_of(self, info: Any) -> str | None:
        descr = info.get("descr") if isinstance(info, dict) else None
        pair = descr.get("pair") if isinstance(descr, dict) else None
        return self._table.instrument_of_rest_pair(pair) if isinstance(pair, str) else None

    def _client_id_of(self, order_id: str, cl_ord_id: object) -> str:
        order = self._orders.by_order_id(order_id)
        if order is not None:
            return order.client_order_id
        return foreign_client_order_id(cl_ord_id if isinstance(cl_ord_id, str) else None, order_id)

    async def _push_order_events(self, events: list[OrderEvent]) -> None:
        for event in events:
            if event.status.is_terminal:
                order = self._orders.find(event.client_order_id)
                if order is not None and order.venue_cl_ord_id:
                    self._limiter.order_closed(to_v2(event.instrument), order.venue_cl_ord_id)
            await self._push(event)

    # ------------------------------------------------------------ socket supervision

    async def _supervise(self, link: _Link, setup: SetupStep, on_frame: FrameHandler) -> None:
        """The owned task of one socket: connect, set up, read, reconnect; forever."""
        try:
            while True:
                if link.connections or link.failures:
                    await self._wait_before_reconnect(link)
                self._attempts.record(self._clock())
                try:
                    socket = await KrakenSocket.open(
                        self._session_or_fail(),
                        link.url,
                        name=f"kraken {link.name}",
                        timeout_s=self.config.connect_timeout_s,
                        request_timeout_s=self.config.request_timeout_s,
                        log=self._log,
                    )
                except RetryableAdapterError as exc:
                    link.failures += 1
                    link.last_close = (None, None)
                    if self._first_attempt_failed(link, exc):
                        return
                    self._log.info("kraken_connect_failed", link=link.name, error=str(exc))
                    continue
                reason = await self._serve(link, socket, setup, on_frame)
                if self._first_attempt_failed(link, RetryableAdapterError(reason)):
                    return
        except asyncio.CancelledError:
            raise
        except FatalAdapterError as exc:
            await self._give_up(link, exc)
        except Exception as exc:  # noqa: BLE001 - an owned task logs its failure, then stops
            self._log.exception("kraken_socket_task_failed", link=link.name)
            await self._give_up(link, FatalAdapterError(f"kraken {link.name} task failed: {exc}"))

    async def _serve(
        self, link: _Link, socket: KrakenSocket, setup: SetupStep, on_frame: FrameHandler
    ) -> str:
        """Set up one connected socket and read it until it ends; return why it ended."""
        link.socket = socket
        reader = asyncio.create_task(
            socket.run(
                on_frame,
                ping_interval_s=self.config.ping_interval_s,
                stale_after_s=self.config.stale_after_s,
            ),
            name=f"kraken-{link.name}-reader:{self.account}",
        )
        reader.add_done_callback(lambda _: self._abandon_setup(link))
        reason = f"kraken {link.name} connection closed"
        try:
            try:
                await asyncio.wait_for(
                    setup(socket, link.connections > 0), self.config.connect_timeout_s
                )
            except (RetryableAdapterError, TimeoutError) as exc:
                link.failures += 1
                reason = f"kraken {link.name} setup failed: {exc or type(exc).__name__}"
                self._log.info("kraken_setup_failed", link=link.name, error=reason)
                return reason
            await self._link_up(link)
            if link is self._public:
                await self._resubscribe_streams(socket)
            reason = await reader
            return reason
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.wait({reader}, timeout=_STOP_TIMEOUT_S)
            link.last_close = (socket.close_code, socket.system_status)
            await socket.close()
            link.socket = None
            if link.up:
                link.up = False
                if not self._closed and not _cancelling():
                    self._log.warning("kraken_connection_lost", link=link.name, reason=reason)
                    await self._push(ConnectionChanged(False, reason, self._wall_ns()))

    async def _link_up(self, link: _Link) -> None:
        link.up = True
        link.failures = 0
        link.connections += 1
        if link is self._public:
            self.stats.public_connections += 1
        else:
            self.stats.private_connections += 1
        if link.ready is not None and not link.ready.done():
            link.ready.set_result(None)
            return
        self._log.info("kraken_reconnected", link=link.name)
        await self._push(
            ConnectionChanged(
                True, f"kraken {link.name} connection re-established", self._wall_ns()
            )
        )

    def _abandon_setup(self, link: _Link) -> None:
        """The reader ended: a setup step waiting for a frame will not get it."""
        waiting = self._instrument_frame
        if link is self._public and waiting is not None and not waiting.done():
            waiting.set_exception(
                SocketClosed("kraken public: closed before the instrument snapshot")
            )

    def _first_attempt_failed(self, link: _Link, error: AdapterError) -> bool:
        """Report a failure to a ``connect()`` still waiting; True if it was waiting."""
        if link.ready is not None and not link.ready.done():
            link.ready.set_exception(error)
            return True
        return False

    async def _wait_before_reconnect(self, link: _Link) -> None:
        now = self._clock()
        maintenance = is_maintenance_close(*link.last_close)
        delay = reconnect_delay(
            self._policy,
            failures=link.failures,
            attempts=self._attempts.recent(now),
            now=now,
            draw=self._rng.random(),
            maintenance=maintenance,
        )
        self._log.info(
            "kraken_reconnect_scheduled",
            link=link.name,
            delay_s=round(delay, 3),
            failures=link.failures,
            maintenance=maintenance,
        )
        await asyncio.sleep(delay)

    async def _give_up(self, link: _Link, error: FatalAdapterError) -> None:
        self._fatal = error
        if self._first_attempt_failed(link, error):
            return
        self._log.error("kraken_gave_up", link=link.name, error=str(error))
        await self._push(ConnectionChanged(False, f"gave up: {error}", self._wall_ns()))

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise FatalAdapterError("the adapter's HTTP session is closed")
        return self._session

    # ------------------------------------------------------------ public socket

    async def _setup_public(self, socket: KrakenSocket, again: bool) -> None:
        if not self.config.instruments_from_venue:
            return
        self._instrument_frame = asyncio.get_running_loop().create_future()
        (ack,) = await socket.request(commands.subscribe("instrument", snapshot=True))
        if ack.success is not True:
            raise FatalAdapterError(f"Kraken refused the instrument channel: {ack.error}")
        frame = await self._instrument_frame
        try:
            table = instruments_from_frame(frame)
        except MalformedMessage as exc:
            raise RetryableAdapterError(f"instrument snapshot unreadable: {exc}") from exc
        if not table.specs:
            raise RetryableAdapterError("the instrument snapshot lists no tradable pair")
        self._table = table
        self._feed.set_precisions(table.precisions)

    async def _resubscribe_streams(self, socket: KrakenSocket) -> None:
        for request in self._feed.restart():
            await socket.send(request)

    async def _on_public(self, frame: SpotFrame) -> None:
        if (
            isinstance(frame, UnknownFrame)
            and isinstance(frame.raw, dict)
            and frame.raw.get("channel") == "instrument"
        ):
            self._on_instrument(frame.raw)
            return
        out = self._feed.receive(frame, self._wall_ns())
        for problem in out.problems:
            self._log.warning("kraken_market_data", problem=problem)
        for event in out.events:
            await self._push(event)
        socket = self._public.socket
        if socket is not None:
            for request in out.requests:
                await socket.send(request)

    def _on_instrument(self, raw: dict[str, Any]) -> None:
        waiting = self._instrument_frame
        if raw.get("type") == "snapshot" and waiting is not None and not waiting.done():
            waiting.set_result(raw)
            return
        try:
            update = instruments_from_frame(raw)
        except MalformedMessage as exc:
            self._log.warning("kraken_instrument_update_unreadable", error=str(exc))
            return
        self._table = InstrumentTable(
            {**self._table.specs, **update.specs},
            {**self._table.precisions, **update.precisions},
        )
        self._feed.set_precisions(self._table.precisions)

    # ------------------------------------------------------------ private socket

    async def _setup_private(self, socket: KrakenSocket, again: bool) -> None:
        self._token = await self._rest_client().websockets_token()
        self._executions = ExecutionsSequenceTracker()
        (ack,) = await socket.request(commands.subscribe_executions(self._token))
        if ack.success is not True:
            error = error_for_kraken(ack.error or "no error text", what="subscribe executions")
            if isinstance(error, OrderRejectedError):
                raise FatalAdapterError(str(error)) from error
            raise error
        maxratecount = (ack.result or {}).get("maxratecount")
        tier = _TIERS_BY_MAXRATECOUNT.get(maxratecount) if isinstance(maxratecount, int) else None
        if tier is not None and tier is not self._limiter.tier:
            self._log.info("kraken_rate_tier_from_venue", tier=tier.name, maxratecount=maxratecount)
            self._limiter = OrderRateLimiter(tier, reserve=self.config.rate_reserve)
        if again:
            self._request_resync("private connection re-established")

    async def _on_private(self, frame: SpotFrame) -> None:
        try:
            await self._on_private_frame(frame)
        except (ValidationError, MalformedMessage, ValueError) as exc:
            # A report we cannot turn into events: REST will tell what happened.
            self._log.warning("kraken_execution_unreadable", error=str(exc))
            self._request_resync("an execution report could not be applied")

    async def _on_private_frame(self, frame: SpotFrame) -> None:
        if isinstance(frame, ExecutionsMessage):
            step = self._executions.receive(frame)
            if isinstance(step, SequenceRepeat):
                return
            if isinstance(step, SequenceGap):
                self.stats.executions_gaps += 1
                self._log.warning(
                    "kraken_executions_gap", expected=step.expected, received=step.received
                )
                self._request_resync(f"executions sequence gap ({step.missed} missed)")
            events = self._orders.receive(frame, self._wall_ns())
            await self._push_order_events(events)
            if self._orders.needs_resync:
                self._request_resync("order state needs the venue's view")
        elif isinstance(frame, MethodResponse) and frame.success is False:
            # An answer nobody waited for any more (its request timed out).
            self._log.warning("kraken_late_refusal", method=frame.method, error=frame.error)

    # ------------------------------------------------------------ reconciliation

    def _request_resync(self, why: str) -> None:
        self._log.info("kraken_order_resync_requested", reason=why)
        self._resync_wanted.set()

    async def _resync_loop(self) -> None:
        """The owned task that reconciles order state from REST whenever asked."""
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted.clear()
            self._orders.needs_resync = False
            for attempt in range(_RESYNC_ATTEMPTS):
                try:
                    await self._resync_orders()
                    self.stats.order_resyncs += 1
                    break
                except asyncio.CancelledError:
                    raise
                except RetryableAdapterError as exc:
                    self._log.warning(
                        "kraken_order_resync_retry", attempt=attempt + 1, error=str(exc)
                    )
                    await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
                except Exception:  # noqa: BLE001 - logged; the next request tries again
                    self._log.exception("kraken_order_resync_failed")
                    break

    async def _resync_orders(self) -> None:
        rest = self._rest_client()
        infos: dict[str, Any] = dict(await rest.open_orders())
        missing = [
            order.order_id
            for order in self._orders.unfinished()
            if order.order_id is not None and order.order_id not in infos
        ]
        if missing:
            infos.update(await rest.query_orders(missing))
        behind = [
            (order_id, info)
            for order_id, info in infos.items()
            if _filled_of(info) > self._filled_known(order_id)
        ]
        trades: list[RestTrade] = []
        if behind:
            start = min(_opened_s(info) for _, info in behind) - 1.0
            wanted = {order_id for order_id, _ in behind}
            for txid, info in (await rest.trades_history(max(0.0, start))).items():
                with contextlib.suppress(MalformedMessage):
                    trade = RestTrade.parse(txid, info)
                    if trade.order_id in wanted:
                        trades.append(trade)
        now = self._wall_ns()
        for order_id, info in infos.items():
            instrument = self._instrument_of(info)
            if instrument is None:
                continue
            try:
                reports = rest_order_reports(
                    order_id,
                    info,
                    symbol=to_v2(instrument),
                    trades=[trade for trade in trades if trade.order_id == order_id],
                )
            except MalformedMessage as exc:
                self._log.warning("kraken_rest_order_unreadable", order_id=order_id, error=str(exc))
                continue
            for report in reports:
                await self._push_order_events(self._orders.apply(report, now))

    def _filled_known(self, order_id: str) -> Decimal:
        order = self._orders.by_order_id(order_id)
        return order.filled if order is not None else Decimal(0)


def _filled_of(info: Any) -> Decimal:
    try:
        return to_decimal(info.get("vol_exec", "0"), "vol_exec")
    except (AttributeError, MalformedMessage):
        return Decimal(0)


def _opened_s(info: Any) -> float:
    try:
        return float(info.get("opentm", 0))
    except (AttributeError, TypeError, ValueError):
        return 0.0


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
