"""FeedCore and MarketData on the real Kraken Futures recording, without a socket."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from protocol.market import BookDelta, BookSnapshot, Ticker, Trade
from tests.unit.kraken.recordings import received_frames
from workers.broker.adapters.kraken_futures import schemas
from workers.broker.adapters.kraken_futures.feed import FeedCore
from workers.broker.adapters.kraken_futures.marketdata import FeedKey, MarketData
from workers.broker.adapters.kraken_futures.orders import OrderTracker

RECORDING = "kraken_futures/cryptofeed_book_trade_ticker_2021-07-22.txt"
SECRET = base64.b64encode(hashlib.sha512(b"unit").digest()).decode()
BOOK = FeedKey("book", "PI_ETHUSD")


def frames(exchange_data: Path) -> Iterator[Any]:
    for _, raw in received_frames(exchange_data / RECORDING):
        if "event" not in raw:
            yield raw


def parsed(exchange_data: Path) -> Iterator[schemas.FuturesFrame]:
    for raw in frames(exchange_data):
        yield schemas.parse_frame(raw)


class Consumer:
    """A subscriber's book from protocol events, checking update_id continuity."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.update_id = -1

    def apply(self, event: Any) -> None:
        if isinstance(event, BookSnapshot):
            self.bids, self.asks = dict(event.bids), dict(event.asks)
        else:
            assert isinstance(event, BookDelta) and event.update_id == self.update_id + 1
            for levels, side in ((event.bids, self.bids), (event.asks, self.asks)):
                for price, qty in levels:
                    if qty:
                        side[price] = qty
                    else:
                        side.pop(price, None)
        self.update_id = event.update_id


@pytest.mark.parametrize("depth", [1, 10, 100])
def test_the_view_equals_the_venue_top_after_every_recorded_frame(
    exchange_data: Path, depth: int
) -> None:
    market = MarketData(clock=lambda: 0)
    market.watch(BOOK, "ETH/USD", depth)
    consumer = Consumer()
    published = 0
    for frame in parsed(exchange_data):
        events, resyncs = market.receive(frame)
        assert resyncs == []
        for event in events:
            consumer.apply(event)
            published += 1
        book = market.book(BOOK.product_id)
        if book is not None and getattr(frame, "product_id", None) == BOOK.product_id:
            assert sorted(consumer.bids.items(), reverse=True) == list(map(tuple, book.bids(depth)))
            assert sorted(consumer.asks.items()) == list(map(tuple, book.asks(depth)))
    assert published > 100  # the recording moves the top often


def test_a_gap_asks_for_one_resync_and_a_snapshot_restarts_the_view(exchange_data: Path) -> None:
    market = MarketData(clock=lambda: 0)
    market.watch(BOOK, "ETH/USD", 10)
    deltas = 0
    resyncs: list[Any] = []
    snapshot: schemas.BookSnapshot | None = None
    for frame in parsed(exchange_data):
        if isinstance(frame, schemas.BookSnapshot) and frame.product_id == BOOK.product_id:
            snapshot = frame
        if isinstance(frame, schemas.BookDelta) and frame.product_id == BOOK.product_id:
            deltas += 1
            if deltas == 50:
                continue  # lost
            events, more = market.receive(frame)
            resyncs += more
            if deltas > 50:
                assert events == []  # nothing is published from a broken book
            if deltas == 60:
                break
        else:
            market.receive(frame)
    assert len(resyncs) == 1 and resyncs[0].product_id == BOOK.product_id
    assert "sequence gap" in resyncs[0].reason
    assert snapshot is not None
    events, _ = market.receive(snapshot)  # the venue's answer to the resubscription
    assert isinstance(events[0], BookSnapshot) and events[0].update_id > 1


def test_a_crossed_delta_asks_for_a_resync() -> None:
    market = MarketData(clock=lambda: 0)
    market.watch(BOOK, "ETH/USD", 5)
    level = schemas.BookLevel
    snapshot = schemas.BookSnapshot(
        "book_snapshot",
        "PI_ETHUSD",
        1,
        100,
        None,
        (level(Decimal(99), Decimal(1)),),
        (level(Decimal(101), Decimal(1)),),
    )
    market.receive(snapshot)
    crossing = schemas.BookDelta("book", "PI_ETHUSD", "buy", 101, Decimal(102), Decimal(1), 2)
    events, resyncs = market.receive(crossing)
    assert events == [] and "crossed book" in resyncs[0].reason


def test_trades_and_tickers_of_watched_products(exchange_data: Path) -> None:
    market = MarketData(clock=lambda: 42)
    market.watch(FeedKey("trade", "PI_LTCUSD"), "LTC/USD", 0)
    market.watch(FeedKey("ticker_lite", "PI_LTCUSD"), "LTC/USD", 0)
    trades: list[Trade] = []
    tickers: list[Ticker] = []
    for frame in parsed(exchange_data):
        events, _ = market.receive(frame)
        trades += [e for e in events if isinstance(e, Trade)]
        tickers += [e for e in events if isinstance(e, Ticker)]
    (trade,) = trades  # trade_snapshot history is not replayed as live trades
    assert trade.trade_id == "e2429e31-8b9d-4195-900e-fd42be2dec89"
    assert (trade.instrument, trade.price, trade.qty) == (
        "LTC/USD",
        Decimal("119.44"),
        Decimal(320),
    )
    assert tickers and all(t.instrument == "LTC/USD" and t.ts == 42 for t in tickers)
    assert all(t.bid is not None and t.ask is not None and t.bid < t.ask for t in tickers)


# ---------------------------------------------------------------- FeedCore


def core() -> FeedCore:
    return FeedCore(
        api_key="key",
        api_secret=SECRET,
        market=MarketData(clock=lambda: 0),
        tracker=OrderTracker("acct", lambda _: "ETH/USD"),
        clock=lambda: 7,
    )


def test_a_connection_restores_every_subscription_and_authenticates() -> None:
    feed = core()
    assert feed.add(BOOK, "ETH/USD", 10).send == []  # not connected: recorded only
    feed.add(FeedKey("book", "PI_LTCUSD"), "LTC/USD", 10)
    feed.add(FeedKey("trade", "PI_ETHUSD"), "ETH/USD", 10)
    assert feed.opened() == [
        {"event": "challenge", "api_key": "key"},
        {"event": "subscribe", "feed": "book", "product_ids": ["PI_ETHUSD", "PI_LTCUSD"]},
        {"event": "subscribe", "feed": "trade", "product_ids": ["PI_ETHUSD"]},
    ]
    out = feed.receive({"event": "challenge", "message": "226aee50-88fc"})
    expected = base64.b64encode(
        hmac.new(
            base64.b64decode(SECRET), hashlib.sha256(b"226aee50-88fc").digest(), hashlib.sha512
        ).digest()
    ).decode()
    assert [f["feed"] for f in out.send] == ["fills", "open_orders"]
    assert all(f["signed_challenge"] == expected for f in out.send)
    assert all(f["original_challenge"] == "226aee50-88fc" for f in out.send)
    assert not feed.ready
    feed.receive({"event": "subscribed", "feed": "fills"})
    feed.receive({"event": "subscribed", "feed": "open_orders"})
    assert feed.ready
    acked = feed.receive({"event": "subscribed", "feed": "book", "product_ids": ["PI_ETHUSD"]})
    assert acked.acked == [BOOK]
    feed.closed()
    assert not feed.ready


def test_refusals_and_errors() -> None:
    feed = core()
    feed.opened()
    assert feed.receive({"event": "subscribed_failed", "feed": "fills"}).fatal is not None
    other = core()
    other.opened()
    assert "api key" in (
        other.receive({"event": "error", "message": "Invalid api key"}).fatal or ""
    )
    other.receive({"event": "subscribed", "feed": "fills"})
    other.receive({"event": "subscribed", "feed": "open_orders"})
    out = other.receive({"event": "error", "message": "Invalid product id"})
    assert out.fatal is None and out.notes[0][0] == "kraken_futures_venue_error"
    bad = other.receive({"feed": "book", "product_id": "PI_ETHUSD"})
    assert bad.notes[0][0] == "kraken_futures_bad_frame"
    assert other.receive({"event": "info", "version": 2}).notes[0][0].endswith("version")


def test_a_gap_makes_the_core_resubscribe(exchange_data: Path) -> None:
    feed = core()
    feed.add(BOOK, "ETH/USD", 10)
    feed.opened()
    sent: list[dict[str, Any]] = []
    seen = 0
    for raw in frames(exchange_data):
        if raw.get("feed") == "book" and raw.get("product_id") == BOOK.product_id:
            seen += 1
            if seen == 5:
                continue
        sent += feed.receive(raw).send
        if seen > 40:
            break
    assert sent == [
        {"event": "unsubscribe", "feed": "book", "product_ids": ["PI_ETHUSD"]},
        {"event": "subscribe", "feed": "book", "product_ids": ["PI_ETHUSD"]},
    ]


def test_removing_a_stream_unsubscribes_once() -> None:
    feed = core()
    feed.opened()
    assert feed.add(BOOK, "ETH/USD", 10).send == [
        {"event": "subscribe", "feed": "book", "product_ids": ["PI_ETHUSD"]}
    ]
    assert feed.add(BOOK, "ETH/USD", 10).send == []
    assert feed.remove(BOOK).send == [
        {"event": "unsubscribe", "feed": "book", "product_ids": ["PI_ETHUSD"]}
    ]
    assert feed.remove(BOOK).send == []
