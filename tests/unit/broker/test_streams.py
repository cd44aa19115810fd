"""Market-data sharing between links, the joiner's starting state, and frame coalescing."""

from __future__ import annotations

from decimal import Decimal

import orjson

from protocol.market import BookDelta, BookSnapshot, Channel, Ticker, Trade
from protocol.session import Subscription
from workers.broker.link import coalesce
from workers.broker.streams import MarketCache, StreamKey, StreamTable, event_key

D = Decimal
BOOK = StreamKey("BTC/USD", Channel.BOOK)
TICKER = StreamKey("BTC/USD", Channel.TICKER)


def sub(channel: str = "book", depth: int | None = None, **extra: object) -> Subscription:
    return Subscription(instrument="BTC/USD", channel=channel, depth=depth, **extra)


def test_one_venue_stream_whatever_the_number_of_links() -> None:
    table = StreamTable()
    first = table.subscribe(1, sub("ticker"))
    second = table.subscribe(2, sub("ticker"))
    assert (first.venue, first.link) == (True, True)
    assert (second.venue, second.link) == (False, True)
    left = table.unsubscribe(1, sub("ticker"))
    assert left is not None and not left.venue
    last = table.unsubscribe(2, sub("ticker"))
    assert last is not None and last.venue
    assert table.streams() == []


def test_references_are_counted_per_link() -> None:
    table = StreamTable()
    table.subscribe(1, sub("trades"))
    again = table.subscribe(1, sub("trades"))
    assert not again.venue and not again.link
    first_off = table.unsubscribe(1, sub("trades"))
    assert first_off is not None and not first_off.venue
    second_off = table.unsubscribe(1, sub("trades"))
    assert second_off is not None and second_off.venue


def test_unsubscribing_what_a_link_never_held_changes_nothing() -> None:
    table = StreamTable()
    table.subscribe(1, sub("ticker"))
    assert table.unsubscribe(2, sub("ticker")) is None
    assert table.unsubscribe(1, sub("trades")) is None
    assert table.streams() == [TICKER]


def test_a_closed_link_releases_the_streams_only_it_held() -> None:
    table = StreamTable()
    table.subscribe(1, sub("ticker"))
    table.subscribe(1, sub("book", 10))
    table.subscribe(2, sub("ticker"))
    assert table.streams_of(1) == [TICKER, BOOK] and table.streams_of(2) == [TICKER]
    assert table.drop_link(1) == [(BOOK, 10)]
    assert list(table.links(TICKER)) == [2]


def test_the_venue_book_grows_to_the_deepest_request_and_never_shrinks_while_running() -> None:
    table = StreamTable()
    assert table.subscribe(1, sub("book", 10)).depth == 10
    deeper = table.subscribe(2, sub("book", 25))
    assert deeper.depth_grew and (deeper.previous_depth, deeper.depth) == (10, 25)
    shallower = table.subscribe(1, sub("book", 5))
    assert not shallower.depth_grew and shallower.depth == 25
    table.unsubscribe(2, sub("book", 25))
    ended = table.drop_link(1)
    assert ended == [(BOOK, 25)]


def test_candle_intervals_are_separate_streams() -> None:
    table = StreamTable()
    table.subscribe(1, sub("candles", interval="1m"))
    other = table.subscribe(1, sub("candles", interval="5m"))
    assert other.venue
    assert len(table.streams()) == 2


def test_events_map_to_their_stream() -> None:
    ticker = Ticker(instrument="BTC/USD", ts=1)
    trade = Trade(instrument="BTC/USD", trade_id="t", price=D(1), qty=D(1), taker_side="buy",
                  ts=1)
    delta = BookDelta(instrument="BTC/USD", update_id=2, ts=1)
    assert event_key(ticker) == TICKER
    assert event_key(trade) == StreamKey("BTC/USD", Channel.TRADES)
    assert event_key(delta) == BOOK


def test_a_joining_link_gets_the_book_as_it_is_now() -> None:
    cache = MarketCache()
    cache.apply(BookSnapshot(instrument="BTC/USD", bids=[(D(99), D(1)), (D(98), D(2))],
                             asks=[(D(101), D(1))], update_id=7, ts=1))
    cache.apply(BookDelta(instrument="BTC/USD", bids=[(D(98), D(0)), (D(100), D(3))],
                          asks=[(D(102), D(4))], update_id=8, ts=2))
    now = cache.current(BOOK)
    assert isinstance(now, BookSnapshot)
    assert now.bids == [(D(100), D(3)), (D(99), D(1))]
    assert now.asks == [(D(101), D(1)), (D(102), D(4))]
    assert (now.update_id, now.ts) == (8, 2)


def test_a_gap_in_the_deltas_drops_the_cached_book() -> None:
    cache = MarketCache()
    cache.apply(BookSnapshot(instrument="BTC/USD", bids=[], asks=[], update_id=7, ts=1))
    cache.apply(BookDelta(instrument="BTC/USD", update_id=9, ts=2))
    assert cache.current(BOOK) is None


def test_the_last_ticker_is_kept_until_the_stream_ends() -> None:
    cache = MarketCache()
    cache.apply(Ticker(instrument="BTC/USD", bid=D(1), ts=1))
    assert cache.current(TICKER) == Ticker(instrument="BTC/USD", bid=D(1), ts=1)
    cache.forget(TICKER)
    assert cache.current(TICKER) is None


def test_neighbouring_market_events_share_one_frame_in_order() -> None:
    frames = coalesce([(True, b'{"a":1}'), (True, b'{"a":2}'), (False, b'{"type":"x"}'),
                       (True, b'{"a":3}')])
    assert [orjson.loads(f) for f in frames] == [
        {"type": "market", "events": [{"a": 1}, {"a": 2}]},
        {"type": "x"},
        {"type": "market", "events": [{"a": 3}]},
    ]


def test_coalesced_frames_stay_near_the_size_limit() -> None:
    event = b'{"n":"' + b"x" * 90 + b'"}'
    frames = coalesce([(True, event)] * 50, max_frame=1000)
    assert len(frames) > 1
    assert all(len(f) <= 1000 + 100 for f in frames)
    assert sum(len(orjson.loads(f)["events"]) for f in frames) == 50
