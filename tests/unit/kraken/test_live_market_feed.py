"""The live adapter's public-feed core on recorded Kraken frames: books published as
snapshot + deltas a consumer can apply, resubscription on a bad checksum, trades, tickers
and candles -- no socket involved."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from protocol.market import BookDelta, BookSnapshot, Candle, CandleInterval, Channel, Ticker, Trade
from workers.broker.adapters.kraken.instruments import InstrumentTable, instruments_from_frame
from workers.broker.adapters.kraken.market import (
    MAX_SNAPSHOT_RETRIES,
    FeedOutput,
    PublicFeed,
    StreamKey,
)
from workers.broker.adapters.kraken.schemas import parse_frame

from .recordings import load
from .reference_book import ReferenceBook, reference_checksum

D = Decimal
NOW = 1_700_000_000_000_000_000
BTC_BOOK = StreamKey("BTC/USD", Channel.BOOK, 10)


@pytest.fixture(scope="module")
def table(exchange_data: Path) -> InstrumentTable:
    """Pairs and precisions from the real v2 instrument snapshot."""
    return instruments_from_frame(
        load(exchange_data / "reference/kraken_v2_instrument_snapshot.json")
    )


@pytest.fixture(scope="module")
def recording(exchange_data: Path) -> dict[str, Any]:
    data: dict[str, Any] = load(exchange_data / "kraken_spot_v2/btcusd_book10_2023-07-30.json")
    return data


@pytest.fixture(scope="module")
def doc(exchange_data: Path) -> dict[str, Any]:
    data: dict[str, Any] = load(exchange_data / "kraken_spot_v2/v2_doc_examples.json")
    return data


def feed_with(table: InstrumentTable, *keys: StreamKey) -> PublicFeed:
    feed = PublicFeed(precisions=table.precisions)
    for key in keys:
        feed.add(key)
    return feed


def receive(feed: PublicFeed, frame: Any) -> FeedOutput:
    return feed.receive(parse_frame(copy.deepcopy(frame)), NOW)


class Consumer:
    """What a Market worker does with the events: apply snapshot, then deltas in order."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.update_id: int | None = None
        self.snapshots = 0

    def apply(self, event: Any) -> None:
        if isinstance(event, BookSnapshot):
            self.bids, self.asks = dict(event.bids), dict(event.asks)
            self.update_id = event.update_id
            self.snapshots += 1
        elif isinstance(event, BookDelta):
            assert self.update_id is not None and event.update_id == self.update_id + 1
            self.update_id = event.update_id
            for side, levels in ((self.bids, event.bids), (self.asks, event.asks)):
                for price, qty in levels:
                    if qty == 0:
                        side.pop(price)  # a delete is only ever sent for a level we hold
                    else:
                        side[price] = qty

    def top(
        self, depth: int
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        return (
            sorted(self.bids.items(), reverse=True)[:depth],
            sorted(self.asks.items())[:depth],
        )


def venue_view(feed: PublicFeed, depth: int) -> tuple[list[Any], list[Any]]:
    book = feed.book("BTC/USD")
    assert book is not None
    return [tuple(level) for level in book.bids(depth)], [
        tuple(level) for level in book.asks(depth)
    ]


# ---------------------------------------------------------------- books


def test_the_recording_becomes_a_snapshot_and_deltas_that_rebuild_the_same_book(
    table: InstrumentTable, recording: dict[str, Any]
) -> None:
    feed = PublicFeed(precisions=table.precisions)
    assert feed.add(BTC_BOOK) == [
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10, "snapshot": True},
        }
    ]
    consumer = Consumer()
    for frame in [recording["init"], *recording["updates"]]:
        out = receive(feed, frame)
        assert out.problems == [] and out.requests == []
        for event in out.events:
            consumer.apply(event)
        assert consumer.top(10) == venue_view(feed, 10)
    assert consumer.snapshots == 1
    assert feed.stats.checksums_verified == 510
    assert feed.stats.book_deltas == consumer.update_id - 1  # type: ignore[operator]


def test_a_shallower_stream_gets_the_levels_that_move_into_its_window(
    table: InstrumentTable, recording: dict[str, Any]
) -> None:
    feed = feed_with(table, StreamKey("BTC/USD", Channel.BOOK, 3))
    consumer = Consumer()
    for frame in [recording["init"], *recording["updates"]]:
        for event in receive(feed, frame).events:
            consumer.apply(event)
            assert len(consumer.bids) <= 3 and len(consumer.asks) <= 3
        assert consumer.top(3) == venue_view(feed, 3)


def test_the_documented_matic_example_verifies_with_precisions_from_the_instrument_channel(
    table: InstrumentTable, exchange_data: Path
) -> None:
    frames = load(exchange_data / "kraken_spot_v2/v2_book_doc_example_MATIC_USD.json")
    feed = feed_with(table, StreamKey("MATIC/USD", Channel.BOOK, 10))
    snapshot, update = (receive(feed, frame) for frame in frames)
    assert [type(e) for e in snapshot.events] == [BookSnapshot]
    assert update.events == [
        BookDelta(
            instrument="MATIC/USD",
            bids=[(D("0.5657"), D("1098.3947558"))],
            asks=[],
            update_id=2,
            ts=1696613755_440295000,
        )
    ]
    assert feed.stats.checksums_verified == 2


def corrupted(frame: dict[str, Any]) -> dict[str, Any]:
    bad = copy.deepcopy(frame)
    bad["data"][0]["checksum"] ^= 1
    return bad


def fresh_snapshot(
    updates: list[dict[str, Any]], init: dict[str, Any], upto: int
) -> dict[str, Any]:
    """The snapshot Kraken would send after update ``upto``: the recorded book at that
    point, numbers at the pair's precision (as the live wire has them)."""
    book = ReferenceBook(10)
    data = init["data"][0]
    book.snapshot(
        [(lv["price"], lv["qty"]) for lv in data["bids"]],
        [(lv["price"], lv["qty"]) for lv in data["asks"]],
    )
    for frame in updates[:upto]:
        item = frame["data"][0]
        book.update(
            [(lv["price"], lv["qty"]) for lv in item["bids"]],
            [(lv["price"], lv["qty"]) for lv in item["asks"]],
        )
    price, qty = D("0.1"), D("0.00000001")
    bids = [(p.quantize(price), q.quantize(qty)) for p, q in book.sorted_bids()]
    asks = [(p.quantize(price), q.quantize(qty)) for p, q in book.sorted_asks()]
    return {
        "channel": "book",
        "type": "snapshot",
        "data": [
            {
                "symbol": "BTC/USD",
                "bids": [{"price": p, "qty": q} for p, q in bids],
                "asks": [{"price": p, "qty": q} for p, q in asks],
                "checksum": reference_checksum(asks, bids),
                "timestamp": item["timestamp"],
            }
        ],
    }


def test_a_bad_checksum_asks_for_a_fresh_snapshot_once_and_publishes_it(
    table: InstrumentTable, recording: dict[str, Any]
) -> None:
    init, updates = recording["init"], recording["updates"]
    feed = feed_with(table, BTC_BOOK)
    consumer = Consumer()
    for frame in [init, *updates[:99]]:
        for event in receive(feed, frame).events:
            consumer.apply(event)

    out = receive(feed, corrupted(updates[99]))
    assert out.events == []
    assert out.requests == [
        {
            "method": "unsubscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10},
        },
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "snapshot": True, "depth": 10},
        },
    ]
    assert "checksum mismatch" in out.problems[0]
    for frame in updates[100:150]:  # still in flight while the resubscription travels
        assert receive(feed, frame) == FeedOutput()

    resync = receive(feed, fresh_snapshot(updates, init, 150))
    assert [type(e) for e in resync.events] == [BookSnapshot]
    consumer.apply(resync.events[0])
    for frame in updates[150:]:
        out = receive(feed, frame)
        assert out.problems == []
        for event in out.events:
            consumer.apply(event)
    assert consumer.snapshots == 2 and consumer.top(10) == venue_view(feed, 10)
    assert (feed.stats.checksum_mismatches, feed.stats.book_resubscribes) == (1, 1)


def test_snapshots_that_never_verify_stop_the_resubscriptions(
    table: InstrumentTable, recording: dict[str, Any]
) -> None:
    feed = feed_with(table, BTC_BOOK)
    requests = 0
    for _ in range(MAX_SNAPSHOT_RETRIES + 2):
        out = receive(feed, corrupted(recording["init"]))
        assert out.events == []
        requests += len(out.requests)
    assert requests == 2 * (MAX_SNAPSHOT_RETRIES - 1)
    assert "not publishing this book" in out.problems[0]
    assert [type(e) for e in receive(feed, recording["init"]).events] == [BookSnapshot]


def test_after_a_reconnect_every_stream_is_subscribed_again_and_books_wait_for_a_snapshot(
    table: InstrumentTable, recording: dict[str, Any]
) -> None:
    trades = StreamKey("BTC/USD", Channel.TRADES)
    feed = feed_with(table, BTC_BOOK, trades)
    receive(feed, recording["init"])
    requests = feed.restart()
    assert [r["params"]["channel"] for r in requests] == ["book", "trade"]
    assert receive(feed, recording["updates"][0]).events == []
    assert not feed.is_synced("BTC/USD")
    assert [type(e) for e in receive(feed, recording["init"]).events] == [BookSnapshot]


def test_stream_keys_and_conflicts() -> None:
    feed = PublicFeed()
    assert StreamKey.of("BTC/USD", "book") == StreamKey("BTC/USD", Channel.BOOK, 10)
    with pytest.raises(ValueError, match="interval"):
        StreamKey.of("BTC/USD", Channel.CANDLES)
    with pytest.raises(ValueError):
        StreamKey.of("BTC/USD", Channel.BOOK, 5000)
    feed.add(BTC_BOOK)
    assert feed.add(BTC_BOOK) == []
    with pytest.raises(ValueError, match="already streams a book"):
        feed.add(StreamKey("BTC/USD", Channel.BOOK, 25))
    assert feed.remove(BTC_BOOK) == [
        {"method": "unsubscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}}
    ]
    assert feed.remove(BTC_BOOK) == []


# ---------------------------------------------------------------- trades, ticker, candles


def test_trades_are_checked_for_contiguous_ids(table: InstrumentTable, doc: dict[str, Any]) -> None:
    feed = feed_with(table, StreamKey("MATIC/USD", Channel.TRADES))
    snapshot = receive(feed, doc["trade_snapshot"])
    assert [t.trade_id for t in snapshot.events if isinstance(t, Trade)] == ["4665846", "4665847"]
    assert snapshot.events[0] == Trade(
        instrument="MATIC/USD",
        trade_id="4665846",
        price=D("0.5147"),
        qty=D("6423.46326"),
        taker_side="buy",
        ts=1695628116_925533000,
    )
    update = receive(feed, doc["trade_update"])  # trade_id 4665906: 58 trades never seen
    assert [t.trade_id for t in update.events if isinstance(t, Trade)] == ["4665906"]
    assert "58 public trade(s) missing" in update.problems[0]
    assert receive(feed, doc["trade_update"]).events == []  # the same trade again
    assert (feed.stats.trade_gaps, feed.stats.trade_repeats) == (1, 1)


def test_frames_of_streams_not_subscribed_are_ignored(
    table: InstrumentTable, doc: dict[str, Any]
) -> None:
    feed = feed_with(table, StreamKey("BTC/USD", Channel.TRADES))
    assert receive(feed, doc["trade_snapshot"]).events == []
    assert receive(feed, doc["ticker_snapshot"]).events == []


def test_tickers(table: InstrumentTable, doc: dict[str, Any]) -> None:
    feed = feed_with(table, StreamKey("ALGO/USD", Channel.TICKER))
    (ticker,) = receive(feed, doc["ticker_snapshot"]).events
    assert ticker == Ticker(
        instrument="ALGO/USD",
        bid=D("0.10025"),
        bid_qty=D("740.0"),
        ask=D("0.10036"),
        ask_qty=D("1361.44813783"),
        last=D("0.10035"),
        ts=1695632671_742648000,
    )


def test_candles_are_closed_when_the_next_interval_starts(
    table: InstrumentTable, doc: dict[str, Any]
) -> None:
    feed = feed_with(table, StreamKey("ALGO/USD", Channel.CANDLES, interval=CandleInterval.M5))
    (current,) = receive(feed, doc["ohlc_snapshot"]).events  # history: only the latest one
    assert isinstance(current, Candle) and not current.closed
    assert (current.start, current.high, current.volume) == (
        1696433400_000000000,
        D("0.0988"),
        D("16255.46368"),
    )
    nxt = copy.deepcopy(doc["ohlc_snapshot"]["data"][1])
    nxt.update(
        {
            "interval_begin": "2023-10-04T15:35:00.000000000Z",
            "open": D("0.0989"),
            "high": D("0.0989"),
            "low": D("0.0989"),
            "close": D("0.0989"),
            "volume": D("5"),
        }
    )
    update = receive(feed, {"channel": "ohlc", "type": "update", "data": [nxt]})
    assert [(c.start, c.closed) for c in update.events if isinstance(c, Candle)] == [
        (1696433400_000000000, True),
        (1696433700_000000000, False),
    ]


def test_a_malformed_frame_is_dropped_and_reported(table: InstrumentTable) -> None:
    feed = feed_with(table, StreamKey("ALGO/USD", Channel.CANDLES, interval=CandleInterval.M5))
    out = receive(feed, {"channel": "ohlc", "type": "update", "data": [{"symbol": "ALGO/USD"}]})
    assert out.events == [] and feed.stats.dropped_frames == 1
    assert "dropped a frame" in out.problems[0]
