"""Market data through `KrakenSpotAdapter` from the fake Kraken venue replaying the real
BTC/USD book recording: the book an algo rebuilds from the events always equals the
venue's, across corrupted checksums and skipped messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from protocol.errors import ErrorCode
from protocol.market import (
    BookDelta,
    BookSnapshot,
    Candle,
    CandleInterval,
    Channel,
    Ticker,
    Trade,
)
from tests.fakes.kraken_spot import EventRecorder, FakeKrakenSpot
from workers.broker.adapters.base import OrderRejectedError
from workers.broker.adapters.kraken.adapter import KrakenSpotAdapter
from workers.broker.adapters.kraken.config import KrakenSpotConfig

D = Decimal


class BookMirror:
    """The book a consumer keeps from book_snapshot + book_delta events."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.update_id = 0
        self.snapshots = 0

    def __call__(self, event: Any) -> None:
        if isinstance(event, BookSnapshot):
            self.bids, self.asks = dict(event.bids), dict(event.asks)
            self.snapshots += 1
            self.update_id = event.update_id
        elif isinstance(event, BookDelta):
            assert event.update_id == self.update_id + 1, "a delta was lost or repeated"
            self.update_id = event.update_id
            for side, levels in ((self.bids, event.bids), (self.asks, event.asks)):
                for price, qty in levels:
                    if qty:
                        side[price] = qty
                    else:
                        del side[price]

    def top(self) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


def make_config(venue: FakeKrakenSpot, **overrides: Any) -> KrakenSpotConfig:
    settings: dict[str, Any] = {
        "account": "kraken-md",
        **venue.client_settings(),
        "request_timeout_s": 2.0,
        "reconnect": {"initial_s": 0.05, "max_s": 0.5},
    }
    settings.update(overrides)
    return KrakenSpotConfig.model_validate(settings)


@pytest.fixture
async def venue() -> AsyncIterator[FakeKrakenSpot]:
    async with FakeKrakenSpot() as fake:
        yield fake


@pytest.fixture
async def adapter(venue: FakeKrakenSpot) -> AsyncIterator[KrakenSpotAdapter]:
    live = KrakenSpotAdapter(make_config(venue))
    await live.connect()
    try:
        yield live
    finally:
        await live.close()


@pytest.fixture
def mirror() -> BookMirror:
    return BookMirror()


@pytest.fixture
async def events(adapter: KrakenSpotAdapter, mirror: BookMirror) -> AsyncIterator[EventRecorder]:
    async with EventRecorder(adapter.events(), mirror) as recorder:
        yield recorder


async def in_step(venue: FakeKrakenSpot, events: EventRecorder, mirror: BookMirror) -> None:
    await events.wait_until(
        lambda: mirror.top() == venue.book(), what="the mirror to match the venue"
    )


async def test_the_book_stream_tracks_the_venue_book(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder, mirror: BookMirror
) -> None:
    await adapter.subscribe("BTC/USD", Channel.BOOK)
    snapshot = await events.wait_for(BookSnapshot)
    assert snapshot.bids[0] == (D("29430.2"), D("0.18967538"))
    await venue.play(200)
    await in_step(venue, events, mirror)
    assert adapter.feed.stats.checksums_verified == 201
    await adapter.subscribe("BTC/USD", Channel.BOOK)  # a second subscribe is a no-op
    assert len(venue.requests_of("subscribe", "public")) == 2  # instrument + book


async def test_a_corrupted_checksum_resubscribes_and_a_fresh_snapshot_verifies_again(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder, mirror: BookMirror
) -> None:
    await adapter.subscribe("BTC/USD", Channel.BOOK)
    await events.wait_for(BookSnapshot)
    await venue.play(30)
    await in_step(venue, events, mirror)
    verified = adapter.feed.stats.checksums_verified

    venue.corrupt_next_checksum()
    await venue.play(1)
    fresh = await events.wait_for(BookSnapshot, after=1)
    assert venue.requests_of("unsubscribe") == [
        {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}
    ]
    assert fresh.update_id == mirror.update_id and mirror.snapshots == 2
    await venue.play(100)
    await in_step(venue, events, mirror)
    stats = adapter.feed.stats
    assert (stats.checksum_mismatches, stats.book_resubscribes) == (1, 1)
    assert stats.checksums_verified >= verified + 100


async def test_a_skipped_update_is_caught_by_the_next_checksum_and_repaired(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder, mirror: BookMirror
) -> None:
    await adapter.subscribe("BTC/USD", Channel.BOOK)
    await events.wait_for(BookSnapshot)
    await venue.play(10)
    venue.skip_next_book_update()
    await venue.play(2)
    await events.wait_for(BookSnapshot, after=1)
    await venue.play(50)
    await in_step(venue, events, mirror)
    assert adapter.feed.stats.book_resubscribes == 1


async def test_a_shallow_book_stream_gets_the_levels_entering_its_window(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder, mirror: BookMirror
) -> None:
    await adapter.subscribe("BTC/USD", Channel.BOOK, depth=3)
    snapshot = await events.wait_for(BookSnapshot)
    assert len(snapshot.bids) == len(snapshot.asks) == 3
    assert venue.requests_of("subscribe", "public")[-1]["depth"] == 10  # Kraken's next depth
    await venue.play(150)
    bids, asks = venue.book()
    await events.wait_until(lambda: mirror.top() == (bids[:3], asks[:3]), what="top 3 in step")


async def test_trades_tickers_and_candles(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder
) -> None:
    await adapter.subscribe("BTC/USD", Channel.TRADES)
    await adapter.subscribe("BTC/USD", Channel.TICKER)
    await adapter.subscribe("BTC/USD", Channel.CANDLES, interval=CandleInterval.M1)
    first = await events.wait_for(Ticker)
    assert (first.bid, first.ask) == (D("29430.2"), D("29430.3"))
    for price, qty in (("29430.3", "0.5"), ("29431.0", "0.25"), ("29429.9", "1")):
        await venue.publish_trade("BTC/USD", "buy", D(price), D(qty))
    await events.wait_until(lambda: len(events.of(Trade)) == 3, what="three trades")
    trades = events.of(Trade)
    assert [int(t.trade_id) for t in trades] == list(
        range(int(trades[0].trade_id), int(trades[0].trade_id) + 3)
    )
    assert (trades[0].price, trades[0].qty, trades[0].taker_side) == (D("29430.3"), D("0.5"), "buy")

    def latest_candles() -> list[Candle]:  # the trades may straddle a minute boundary
        return list({c.start: c for c in events.of(Candle)}.values())

    await events.wait_until(
        lambda: sum(c.volume for c in latest_candles()) == D("1.75"), what="candles of 3 trades"
    )
    candles = latest_candles()
    assert (candles[0].open, candles[-1].close) == (D("29430.3"), D("29429.9"))
    assert max(c.high for c in candles) == D("29431.0") and min(c.low for c in candles) == D(
        "29429.9"
    )
    assert not candles[-1].closed and all(c.closed for c in candles[:-1])
    last = await events.wait_for(Ticker, lambda t: t.last == D("29429.9"))
    assert last.instrument == "BTC/USD"
    assert adapter.feed.stats.trade_gaps == 0


async def test_subscriptions_the_venue_or_the_adapter_cannot_serve(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter
) -> None:
    with pytest.raises(OrderRejectedError) as unknown:
        await adapter.subscribe("FOO/BAR", Channel.BOOK)
    assert unknown.value.code is ErrorCode.UNKNOWN_INSTRUMENT
    with pytest.raises(OrderRejectedError) as deep:
        await adapter.subscribe("BTC/USD", Channel.BOOK, depth=5000)
    assert deep.value.code is ErrorCode.INVALID_FIELD
    venue.fail_next("subscribe", "Subscription depth not supported")
    with pytest.raises(OrderRejectedError, match="Subscription depth not supported"):
        await adapter.subscribe("ETH/USD", Channel.BOOK)
    assert adapter.feed.streams == []
    await adapter.subscribe("ETH/USD", Channel.BOOK)  # refused once, fine the next time
    assert len(adapter.feed.streams) == 1


async def test_instruments_come_from_the_venues_instrument_channel(
    adapter: KrakenSpotAdapter,
) -> None:
    specs = {spec.instrument: spec for spec in await adapter.instruments()}
    assert len(specs) > 600
    assert (specs["ETH/USD"].tick_size, specs["ETH/USD"].min_qty) == (D("0.01"), D("0.002"))
