"""`KrakenFuturesAdapter`: one account's live session with Kraken Futures.

Market data and order feedback arrive on one WebSocket v1 connection (public ``book``,
``trade``, ``ticker_lite``; private ``fills`` and ``open_orders`` after the signed
challenge). Orders go over signed REST (``sendorder``, ``editorder``, ``cancelorder``) with
our ``client_order_id`` as ``cliOrdId``. The pieces:

* `FeedCore` / `MarketData` / `OrderTracker` — pure: frames and answers in, protocol events
  out (books with seq checks and resync, order state merged from REST and both feeds);
* `FeedRunner` — the WebSocket shell: handshake, reading, reconnect with backoff + jitter;
* `FuturesRestClient` — rate limit (refused locally before the venue would), signing, and
  conversion of every failure into an `AdapterError`.

Canonical instruments (``BTC/USD``) map to the configured perpetual family (``PF_XBTUSD``
by default) from the venue's instrument list; no product id leaves this package.
Quantities are passed through as the venue's sizes: base units for PF contracts, contracts
of one quote unit for PI contracts.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import structlog

from protocol.errors import ErrorCode
from protocol.market import CandleInterval, Channel, InstrumentSpec
from protocol.orders import BalancesSnapshot, Fill, NewOrder, OrderEvent, OrderSnapshot
from workers.broker.adapters.backoff import ReconnectPolicy
from workers.broker.adapters.base import (
    Adapter,
    AdapterError,
    AdapterEvent,
    FatalAdapterError,
    OrderAck,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.kraken_futures import schemas
from workers.broker.adapters.kraken_futures.accounts import cash_from_accounts
from workers.broker.adapters.kraken_futures.config import KrakenFuturesConfig
from workers.broker.adapters.kraken_futures.errors import MalformedMessage
from workers.broker.adapters.kraken_futures.feed import FeedCore
from workers.broker.adapters.kraken_futures.marketdata import Feed, FeedKey, MarketData
from workers.broker.adapters.kraken_futures.orders import (
    OrderTracker,
    edited_to,
    executed_amount,
    fill_from_rest,
    parse_iso_ns,
    snapshot_from_rest,
)
from workers.broker.adapters.kraken_futures.products import ProductMap, canonical_currency
from workers.broker.adapters.kraken_futures.ratelimit import DerivativesRateLimiter
from workers.broker.adapters.kraken_futures.rejections import rejection_for_status
from workers.broker.adapters.kraken_futures.requests import (
    RestCall,
    accounts_call,
    cancelorder_call,
    editorder_call,
    fills_call,
    instruments_call,
    openorders_call,
    sendorder_call,
)
from workers.broker.adapters.kraken_futures.rest import FuturesRestClient
from workers.broker.adapters.kraken_futures.ws import FeedRunner
from workers.broker.adapters.queue import EventQueue

log = structlog.get_logger(__name__)

FEEDS: dict[Channel, Feed] = {
    Channel.BOOK: "book",
    Channel.TRADES: "trade",
    Channel.TICKER: "ticker_lite",
}
FILLS_PAGE = 100  # the venue's page size for GET fills
MAX_FILL_PAGES = 20


class KrakenFuturesAdapter(Adapter):
    """The `Adapter` contract over Kraken Futures (WebSocket v1 + REST v3).

    Besides the contract: `connected` tells whether the feed is up and subscribed right now,
    `product_id(instrument)` names the venue contract of an instrument (for operators and
    logs; never put it on the wire to algos).
    """

    venue = "kraken-futures"

    def __init__(
        self,
        config: KrakenFuturesConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        self.config = config
        self.account = config.account
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._policy = reconnect or ReconnectPolicy(
            initial_s=config.reconnect_initial_s,
            max_s=max(config.reconnect_max_s, config.reconnect_initial_s),
        )
        self._log = log.bind(account=config.account, venue=self.venue)
        self._products = ProductMap()
        self._limiter = DerivativesRateLimiter(reserve=config.cancel_reserve_units)
        self._tracker = OrderTracker(config.account, self._instrument_of)
        self._session: aiohttp.ClientSession | None = None
        self._rest: FuturesRestClient | None = None
        self._core: FeedCore | None = None
        self._runner: FeedRunner | None = None
        self._queue = EventQueue(self.config.max_queue)
        self._closed = False

    # ------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._runner is not None and self._runner.connected

    @property
    def backlog(self) -> int:
        """Events received and not yet taken from `events()`."""
        return len(self._queue)

    def product_id(self, instrument: str) -> str | None:
        product = self._products.by_instrument(instrument)
        return product.product_id if product is not None else None

    def _instrument_of(self, product_id: str) -> str | None:
        product = self._products.by_id(product_id)
        return product.instrument if product is not None else None

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Load the instruments, open the feed and complete the private handshake.
        Raises `RetryableAdapterError` (venue unreachable) or `FatalAdapterError` (bad
        credentials, no tradable contract, protocol mismatch)."""
        if self._closed:
            raise FatalAdapterError("this adapter was closed; create a new one")
        if self._runner is not None:
            return
        secret = self.config.api_secret.get_secret_value()
        key = self.config.api_key.get_secret_value()
        session = aiohttp.ClientSession()
        try:
            self._session = session
            self._rest = FuturesRestClient(
                session,
                base_url=self.config.rest_url,
                api_key=key,
                api_secret=secret,
                limiter=self._limiter,
                monotonic=self._monotonic,
                clock=self._clock,
                timeout_s=self.config.request_timeout_s,
            )
            await self.instruments()
            if not len(self._products):
                raise FatalAdapterError(
                    f"Kraken Futures lists no tradable {self.config.contract_type} perpetual"
                )
            self._core = FeedCore(
                api_key=key,
                api_secret=secret,
                market=MarketData(self._clock),
                tracker=self._tracker,
                clock=self._clock,
            )
            runner = FeedRunner(
                self._core,
                session=session,
                url=self.config.ws_url,
                heartbeat_s=self.config.heartbeat_s,
                timeout_s=self.config.request_timeout_s,
                policy=self._policy,
                rng=self._rng,
                deliver=self._deliver,
                clock=self._clock,
                logger=self._log,
            )
            await runner.start()
            self._runner = runner
        except BaseException:
            self._session = self._rest = None
            await session.close()
            raise
        self._log.info("kraken_futures_connected", products=len(self._products))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._queue.close()

    async def events(self) -> AsyncIterator[AdapterEvent]:
        async for event in self._queue.drain():
            yield event

    def _push(self, events: list[OrderEvent] | list[AdapterEvent]) -> None:
        self._queue.push_all(events)

    async def _deliver(self, events: list[AdapterEvent]) -> None:
        """The feed's way in: waits (so the feed stops reading) while the consumer lags."""
        await self._queue.put(events)

    def _usable(self) -> tuple[FuturesRestClient, FeedCore, FeedRunner]:
        if self._closed:
            raise FatalAdapterError("this adapter was closed; create a new one")
        runner = self._runner
        if runner is not None and runner.fatal is not None:
            raise runner.fatal
        if runner is None or self._rest is None or self._core is None:
            raise FatalAdapterError("the Kraken Futures adapter is not connected; call connect()")
        return self._rest, self._core, runner

    # ------------------------------------------------------------ market data

    async def subscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        """As the contract says; returns once the venue confirmed the subscription. While
        the feed is down the subscription is recorded and starts (with its snapshot) when the
        feed is back. Candles are refused (`invalid_field`): Kraken Futures WebSocket v1 has
        no candle feed. Raises `RetryableAdapterError` when the venue does not confirm."""
        _, core, runner = self._usable()
        key = self._feed_key(instrument, channel)
        out = core.add(key, instrument, depth or self.config.default_book_depth)
        self._push(out.events)
        try:
            await runner.subscribe(key, out.send)
        except RetryableAdapterError:
            await runner.send(core.remove(key).send)
            raise

    async def unsubscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        _, core, runner = self._usable()
        try:
            key = self._feed_key(instrument, channel)
        except OrderRejectedError:
            return
        await runner.send(core.remove(key).send)

    def _feed_key(self, instrument: str, channel: Channel) -> FeedKey:
        feed = FEEDS.get(Channel(channel))
        if feed is None:
            raise OrderRejectedError(
                ErrorCode.INVALID_FIELD,
                f"Kraken Futures has no {channel} feed; subscribe to trades and build them",
            )
        product = self._products.by_instrument(instrument)
        if product is None:
            raise OrderRejectedError(
                ErrorCode.UNKNOWN_INSTRUMENT,
                f"Kraken Futures lists no {self.config.contract_type} perpetual for {instrument!r}",
            )
        return FeedKey(feed, product.product_id)

    # ------------------------------------------------------------ orders

    async def place_order(self, request: NewOrder) -> OrderAck:
        """As the contract says. Re-sending a `client_order_id` this session already placed
        returns that order's ack and sends nothing. A refusal that Kraken reports as
        ``result: success`` with a failing status raises `OrderRejectedError` with its code;
        a call the rate limiter refuses raises `OrderRejectedError(rate_limited)` and leaves
        the id free for a later attempt."""
        rest, _, _ = self._usable()
        cid = request.client_order_id
        if request.account != self.account:
            raise OrderRejectedError(
                ErrorCode.FORBIDDEN,
                f"this session trades account {self.account!r}, not {request.account!r}",
                client_order_id=cid,
            )
        product = self._products.by_instrument(request.instrument)
        if product is None:
            raise OrderRejectedError(
                ErrorCode.UNKNOWN_INSTRUMENT,
                f"Kraken Futures lists no {self.config.contract_type} perpetual for "
                f"{request.instrument!r}",
                client_order_id=cid,
            )
        known = self._tracker.get(cid)
        retry_of_unknown = False
        if known is not None:
            if known.silent:
                raise OrderRejectedError(
                    ErrorCode.DUPLICATE_ORDER,
                    f"client_order_id {cid!r} was already used by an order the venue refused",
                    client_order_id=cid,
                )
            if known.order_id is not None:
                return OrderAck(cid, known.order_id, self._clock())
            if known.awaiting_answer:
                raise RetryableAdapterError(f"order {cid!r} is being placed; ask again shortly")
            retry_of_unknown = True
        call = sendorder_call(request, product.product_id)
        rest.admit(call, client_order_id=cid)  # a local refusal registers nothing
        self._tracker.begin(
            client_order_id=cid,
            instrument=request.instrument,
            product_id=product.product_id,
            side=request.side,
            order_type=request.order_type,
            time_in_force=request.time_in_force,
            qty=request.qty,
            price=request.price,
        )
        answer = await self._order_call(rest, call, cid)
        response = _parsed(answer, schemas.SendOrderResponse, "sendorder")
        status = response.sendStatus
        rejection = rejection_for_status("sendorder", status.status, client_order_id=cid)
        if rejection is not None:
            if status.status == "clientOrderIdAlreadyExist" and retry_of_unknown:
                return await self._adopt_existing(rest, cid, rejection)
            self._tracker.rejected(cid, status.order_id)
            self._log.info("kraken_futures_order_rejected", order_id=cid, status=status.status)
            raise rejection
        if not status.order_id:
            self._tracker.unresolved(cid, self._clock())
            raise FatalAdapterError("Kraken Futures accepted an order without an order_id")
        ts = self._venue_ts(status.receivedTime)
        try:
            executed = executed_amount(status.orderEvents)
        except MalformedMessage:
            executed = Decimal(0)
        self._push(self._tracker.accepted(cid, status.order_id, ts, executed=executed))
        self._log_anomalies()
        return OrderAck(cid, status.order_id, ts)

    async def _order_call(self, rest: FuturesRestClient, call: RestCall, cid: str) -> Any:
        """Send an admitted ``sendorder``; keeps the tracker's view of the order right
        whatever happens."""
        try:
            return await rest.send(call, client_order_id=cid)
        except OrderRejectedError as exc:
            if exc.code is ErrorCode.RATE_LIMITED:
                self._tracker.forget(cid)  # nothing was placed; the id may be used again
            else:
                self._tracker.rejected(cid)
            raise
        except AdapterError:
            # The venue may or may not have the order: let its feed tell.
            self._push(self._tracker.unresolved(cid, self._clock()))
            raise
        except BaseException:
            self._push(self._tracker.unresolved(cid, self._clock()))
            raise

    async def _adopt_existing(
        self, rest: FuturesRestClient, cid: str, rejection: OrderRejectedError
    ) -> OrderAck:
        """An earlier attempt whose answer was lost did place the order: find it."""
        for item in await self._open_order_items(rest):
            if item.get("cliOrdId") == cid and item.get("order_id"):
                order_id = str(item["order_id"])
                ts = self._clock()
                self._push(self._tracker.accepted(cid, order_id, ts))
                return OrderAck(cid, order_id, ts)
        self._tracker.rejected(cid)
        raise rejection

    async def cancel_order(self, client_order_id: str, *, order_id: str | None = None) -> None:
        rest, _, _ = self._usable()
        known = self._tracker.get(client_order_id)
        venue_id = order_id or (known.order_id if known is not None else None)
        call = cancelorder_call(client_order_id, order_id=venue_id)
        answer = await rest.call(call, client_order_id=client_order_id)
        response = _parsed(answer, schemas.CancelOrderResponse, "cancelorder")
        status = response.cancelStatus
        rejection = rejection_for_status(
            "cancelorder", status.status, client_order_id=client_order_id
        )
        if rejection is not None:
            raise rejection
        ts = self._venue_ts(status.receivedTime)
        self._push(self._tracker.cancelled(client_order_id, ts))

    async def modify_order(
        self,
        client_order_id: str,
        *,
        order_id: str | None = None,
        qty: Decimal | None = None,
        price: Decimal | None = None,
    ) -> None:
        """As the contract says. `qty` is the new total; Kraken's ``editorder`` takes the new
        *open* size, so the adapter sends the total minus what this session has seen filled.
        A fill the feed has not delivered yet when the edit leaves makes the venue's total
        larger than asked; the ``order_modified`` event then reports the venue's total."""
        rest, _, _ = self._usable()
        known = self._tracker.get(client_order_id)
        call = editorder_call(
            client_order_id,
            order_id=order_id or (known.order_id if known is not None else None),
            filled=known.filled if known is not None else Decimal(0),
            qty=qty,
            price=price,
        )
        answer = await rest.call(call, client_order_id=client_order_id)
        response = _parsed(answer, schemas.EditOrderResponse, "editorder")
        status = response.editStatus
        rejection = rejection_for_status(
            "editorder", status.status, client_order_id=client_order_id
        )
        if rejection is not None:
            raise rejection
        ts = self._venue_ts(status.receivedTime)
        try:
            venue_says = edited_to(status.orderEvents)
        except MalformedMessage:
            venue_says = None
        if venue_says is not None:
            # The venue's total counts fills this session may not have seen yet.
            qty, price = venue_says
        self._push(self._tracker.edited(client_order_id, ts, qty=qty, price=price))

    # ------------------------------------------------------------ account state

    async def open_orders(self) -> list[OrderSnapshot]:
        """Working orders with a ``cliOrdId`` on this session's contracts. Orders placed
        outside tradefleet (no client order id) are not reported."""
        rest, _, _ = self._usable()
        snapshots = []
        for item in await self._open_order_items(rest):
            cid = item.get("cliOrdId")
            known = self._tracker.get(cid) if isinstance(cid, str) else None
            try:
                snapshot = snapshot_from_rest(item, self.account, self._instrument_of, known)
            except MalformedMessage as exc:
                raise FatalAdapterError(f"openorders: {exc}") from exc
            if snapshot is not None:
                snapshots.append(snapshot)
        return sorted(snapshots, key=lambda s: s.ts)

    async def _open_order_items(self, rest: FuturesRestClient) -> list[dict[str, Any]]:
        answer = await rest.call(openorders_call())
        items = answer.get("openOrders")
        if not isinstance(items, list):
            raise FatalAdapterError("openorders: the answer has no openOrders list")
        return [item for item in items if isinstance(item, dict)]

    async def fills_since(self, ts: int) -> list[Fill]:
        """Fills with ``ts >= ts``, oldest first, read from ``GET fills`` page by page. Kraken
        reports no fee there: fees come from the ``fills`` feed when this session saw the
        fill, else they are 0 (in the contract's settlement currency)."""
        rest, _, _ = self._usable()
        found: dict[str, Fill] = {}
        before: str | None = None
        for _ in range(MAX_FILL_PAGES):
            answer = await rest.call(fills_call(before))
            items = answer.get("fills")
            if not isinstance(items, list):
                raise FatalAdapterError("fills: the answer has no fills list")
            for item in items:
                if not isinstance(item, dict):
                    continue
                try:
                    fill = fill_from_rest(
                        item,
                        self.account,
                        self._instrument_of,
                        self._tracker.client_order_id_of,
                        self._tracker.fee_of,
                        self._settlement_currency,
                    )
                except MalformedMessage as exc:
                    raise FatalAdapterError(f"fills: {exc}") from exc
                if fill is not None and fill.ts >= ts:
                    found[fill.fill_id] = fill
            if len(items) < FILLS_PAGE:
                break
            oldest = items[-1].get("fillTime") if isinstance(items[-1], dict) else None
            if not isinstance(oldest, str) or oldest == before or _iso_ns(oldest) < ts:
                break
            before = oldest
        return sorted(found.values(), key=lambda f: (f.ts, f.fill_id))

    def _settlement_currency(self, instrument: str) -> str:
        base, _, quote = instrument.partition("/")
        return canonical_currency(quote if self.config.contract_type == "PF" else base)

    async def instruments(self) -> list[InstrumentSpec]:
        """The configured perpetual family's contracts (public call; refreshes the map)."""
        rest = self._rest
        if rest is None or self._closed:
            raise FatalAdapterError("the Kraken Futures adapter is not connected; call connect()")
        answer = await rest.call(instruments_call())
        try:
            self._products = ProductMap.from_instruments(answer, self.config.contract_type)
        except MalformedMessage as exc:
            raise FatalAdapterError(f"instruments: {exc}") from exc
        return self._products.specs()

    async def balances(self) -> BalancesSnapshot:
        """Cash per currency over the margin wallets (see `accounts`)."""
        rest, _, _ = self._usable()
        answer = await rest.call(accounts_call())
        try:
            cash = cash_from_accounts(answer)
        except MalformedMessage as exc:
            raise FatalAdapterError(f"accounts: {exc}") from exc
        return BalancesSnapshot(account=self.account, cash=cash, ts=self._clock())

    # ------------------------------------------------------------ helpers

    def _venue_ts(self, text: str | None) -> int:
        if text:
            try:
                return parse_iso_ns(text)
            except MalformedMessage:
                pass
        return self._clock()

    def _log_anomalies(self) -> None:
        for detail in self._tracker.drain_anomalies():
            self._log.warning("kraken_futures_order_anomaly", detail=detail)


def _iso_ns(text: str) -> int:
    try:
        return parse_iso_ns(text)
    except MalformedMessage:
        return 0


def _parsed(answer: Any, kind: type[Any], endpoint: str) -> Any:
    try:
        response = schemas.parse_rest_response(answer)
    except MalformedMessage as exc:
        raise FatalAdapterError(
            f"{endpoint}: unexpected answer from Kraken Futures: {exc}"
        ) from exc
    if not isinstance(response, kind):
        raise FatalAdapterError(f"{endpoint}: Kraken Futures answered a different request")
    return response
