"""KrakenFuturesAdapter market data and connection handling against the fake venue.

The fake replays the real 2021 Kraken Futures recording; the consumer's book is rebuilt
from protocol events only and compared with the venue's own book. A ``ticker_lite`` with a
marker bid is the barrier: frames arrive in order, so once that ticker is seen every earlier
frame has been handled.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from protocol.errors import ErrorCode
from protocol.market import BookSnapshot, Channel, Ticker, Trade
from protocol.orders import NewOrder, OrderAccepted, OrderFilled
from tests.fakes.kraken_futures import (
    API_KEY,
    API_SECRET,
    EventTap,
    FakeKrakenFutures,
    LocalBook,
)
from workers.broker.adapters.base import (
    ConnectionChanged,
    FatalAdapterError,
    OrderRejectedError,
)
from workers.broker.adapters.kraken_futures.adapter import KrakenFuturesAdapter
from workers.broker.adapters.kraken_futures.config import KrakenFuturesConfig

ETH, PRODUCT = "ETH/USD", "PI_ETHUSD"
DEPTH = 10


def config(venue: FakeKrakenFutures, **overrides: Any) -> KrakenFuturesConfig:
    values: dict[str, Any] = {
        "account": "kf-md",
        "api_key": SecretStr(API_KEY),
        "api_secret": SecretStr(API_SECRET),
        "rest_url": venue.rest_url,
        "ws_url": venue.ws_url,
        "contract_type": "PI",
        "request_timeout_s": 3.0,
        "reconnect_initial_s": 0.02,
        "reconnect_max_s": 0.2,
    }
    values.update(overrides)
    return KrakenFuturesConfig(**values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKrakenFutures]:
    venue = FakeKrakenFutures()
    await venue.start()
    yield venue
    await venue.stop()


@pytest.fixture
async def adapter(fake: FakeKrakenFutures) -> AsyncIterator[KrakenFuturesAdapter]:
    live = KrakenFuturesAdapter(config(fake))
    await live.connect()
    yield live
    await live.close()


@pytest.fixture
async def tap(adapter: KrakenFuturesAdapter) -> AsyncIterator[EventTap]:
    events = EventTap(adapter.events())
    yield events
    await events.close()


def is_snapshot(event: Any) -> bool:
    return isinstance(event, BookSnapshot) and event.instrument == ETH


async def settle(fake: FakeKrakenFutures, tap: EventTap) -> None:
    """Wait until the adapter has handled every frame sent so far."""
    marker = await fake.send_marker_ticker(PRODUCT)
    await tap.wait_for(lambda e: isinstance(e, Ticker) and e.bid == marker)


def consumer_book(tap: EventTap) -> LocalBook:
    book = LocalBook()
    for event in tap.seen:
        if getattr(event, "instrument", None) == ETH:
            book.apply(event)
    return book


async def subscribe_eth(adapter: KrakenFuturesAdapter, tap: EventTap) -> BookSnapshot:
    await adapter.subscribe(ETH, Channel.TICKER)
    await adapter.subscribe(ETH, Channel.BOOK, depth=DEPTH)
    snapshot: BookSnapshot = await tap.wait_for(is_snapshot)
    return snapshot


async def test_book_follows_the_recorded_venue_book(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    snapshot = await subscribe_eth(adapter, tap)
    assert (snapshot.bids, snapshot.asks) == tuple(map(list, fake.book_top(PRODUCT, DEPTH)))
    assert await fake.advance(400, product_id=PRODUCT, feed="book") == 400
    await settle(fake, tap)
    book = consumer_book(tap)
    assert book.top(DEPTH) == fake.book_top(PRODUCT, DEPTH)
    assert book.snapshots == 1 and book.gaps == 0  # update_id + 1 every time
    assert adapter.product_id(ETH) == PRODUCT


async def test_a_skipped_sequence_number_resubscribes_and_sends_a_fresh_snapshot(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    first = await subscribe_eth(adapter, tap)
    await fake.advance(30, product_id=PRODUCT, feed="book")
    fake.skip_next_delta(PRODUCT)
    mark = len(tap.seen)
    await fake.advance(60, product_id=PRODUCT, feed="book")
    fresh = await tap.wait_for(is_snapshot, after=mark)
    assert fresh.update_id > first.update_id  # the consumer's view keeps counting up
    assert fake.subscribe_requests.count(("book", PRODUCT)) == 2
    await fake.advance(100, product_id=PRODUCT, feed="book")
    await settle(fake, tap)
    book = consumer_book(tap)
    assert book.top(DEPTH) == fake.book_top(PRODUCT, DEPTH)
    assert book.snapshots == 2 and book.gaps == 0


async def test_a_crossed_book_resubscribes(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    await subscribe_eth(adapter, tap)
    mark = len(tap.seen)
    await fake.send_crossing_delta(PRODUCT)
    await tap.wait_for(is_snapshot, after=mark)
    await fake.advance(50, product_id=PRODUCT, feed="book")
    await settle(fake, tap)
    assert consumer_book(tap).top(DEPTH) == fake.book_top(PRODUCT, DEPTH)
    crossed = [
        e for e in tap.seen if e.type == "book_delta" and e.bids and e.asks
    ]  # a delta touches one side: the crossing one was never published
    assert crossed == []


async def test_a_dropped_connection_is_reestablished_and_the_book_resynced(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    await subscribe_eth(adapter, tap)
    await fake.advance(20, product_id=PRODUCT, feed="book")
    bids, _ = fake.book_top(PRODUCT, 1)
    await adapter.place_order(
        NewOrder(
            client_order_id="survivor",
            account="kf-md",
            instrument=ETH,
            side="buy",
            qty="5",
            price=str(bids[0][0] - 30),
        )
    )
    await tap.wait_for(lambda e: isinstance(e, OrderAccepted))

    fake.refuse_connections(2)  # the first attempts fail: backoff, then success
    mark = len(tap.seen)
    assert await fake.drop_connections() == 1
    await fake.fill("survivor")  # happens while the adapter is away
    down = await tap.wait_for(lambda e: isinstance(e, ConnectionChanged), after=mark)
    up = await tap.wait_for(lambda e: isinstance(e, ConnectionChanged) and e.connected)
    assert down.connected is False
    resync = await tap.wait_for(is_snapshot, after=tap.index(up))
    # the fill missed while away comes back from the fills snapshot, after the reconnect
    filled = await tap.wait_for(lambda e: isinstance(e, OrderFilled))
    assert tap.index(filled) > tap.index(up)
    assert fake.connections_opened == 2 and fake.private_subscribers() == 1

    await fake.advance(100, product_id=PRODUCT, feed="book")
    await settle(fake, tap)
    book = consumer_book(tap)
    assert book.top(DEPTH) == fake.book_top(PRODUCT, DEPTH)
    assert resync.update_id > 1 and book.gaps == 0
    assert adapter.connected


async def test_trades_and_tickers_are_normalised(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    await adapter.subscribe(ETH, Channel.TRADES)
    await adapter.subscribe(ETH, Channel.TICKER)
    assert await fake.advance(1, product_id=PRODUCT, feed="trade") == 1
    trade = await tap.wait_for(lambda e: isinstance(e, Trade))
    # the recording's one PI_ETHUSD trade after the snapshots
    assert trade.trade_id == "a4cce96f-e061-46ef-9205-8cbe73bb4cdb"
    assert (trade.price, trade.qty, trade.taker_side) == (Decimal("2005.2"), 40, "buy")
    assert trade.ts == 1626994936490 * 1_000_000
    assert await fake.advance(1, product_id=PRODUCT, feed="ticker_lite") == 1
    recorded = fake.ticker(PRODUCT)  # the frame just played
    ticker = await tap.wait_for(
        lambda e: isinstance(e, Ticker) and (e.bid, e.ask) == (recorded["bid"], recorded["ask"])
    )
    assert ticker.instrument == ETH and ticker.bid < ticker.ask
    assert ticker.bid_qty is None and ticker.last is None  # the lite feed has neither


async def test_unknown_instruments_and_candles_are_refused(
    adapter: KrakenFuturesAdapter,
) -> None:
    with pytest.raises(OrderRejectedError) as unknown:
        await adapter.subscribe("DOT/USD", Channel.BOOK)
    assert unknown.value.code is ErrorCode.UNKNOWN_INSTRUMENT
    with pytest.raises(OrderRejectedError) as candles:
        await adapter.subscribe(ETH, Channel.CANDLES)
    assert candles.value.code is ErrorCode.INVALID_FIELD


async def test_unsubscribed_streams_stop(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    await subscribe_eth(adapter, tap)
    await adapter.unsubscribe(ETH, Channel.BOOK)
    mark = len(tap.seen)
    await fake.advance(100, product_id=PRODUCT, feed="book")
    await settle(fake, tap)  # the ticker stream is still on
    assert [e for e in tap.seen[mark:] if e.type in ("book_snapshot", "book_delta")] == []
    await adapter.unsubscribe(ETH, Channel.BOOK)  # again: ignored


async def test_refused_reauthentication_after_a_drop_is_fatal(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    fake.api_secret = base64.b64encode(b"the key was rotated at the venue").decode()
    await fake.drop_connections()
    gave_up = await tap.wait_for(
        lambda e: isinstance(e, ConnectionChanged) and e.reason.startswith("gave up")
    )
    assert gave_up.connected is False and "API key and secret" in gave_up.reason
    assert not adapter.connected
    with pytest.raises(FatalAdapterError, match="private fills feed"):
        await adapter.subscribe(ETH, Channel.BOOK)
