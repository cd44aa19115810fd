"""Flood limiter and subscription ref-counting: pure, no sockets."""

from __future__ import annotations

import pytest

from protocol.market import Channel
from workers.market.flood import FloodLimiter
from workers.market.streams import StreamKey, StreamTable, UpstreamChange


def test_flood_limiter_allows_a_burst_then_refuses() -> None:
    limiter = FloodLimiter(rate_per_s=200, burst=400, now=0.0)
    assert all(limiter.allow(0.0) for _ in range(400))
    assert not limiter.allow(0.0)


def test_flood_limiter_allows_the_rate_forever() -> None:
    limiter = FloodLimiter(rate_per_s=200, burst=400, now=0.0)
    # 200 msgs/s for a minute, evenly spaced: never refused.
    assert all(limiter.allow(i / 200) for i in range(200 * 60))


def test_flood_limiter_refuses_a_sustained_excess_and_recovers_after_a_pause() -> None:
    limiter = FloodLimiter(rate_per_s=200, burst=400, now=0.0)
    results = [limiter.allow(i / 300) for i in range(300 * 10)]  # 300 msgs/s for 10 s
    first_refusal = results.index(False)
    # The burst absorbs the excess (100 msgs/s) for about 4 s, then refusals start.
    assert 300 * 3.5 < first_refusal < 300 * 4.5
    assert limiter.allow(10.0 + 1.0)  # a one-second pause earns tokens back


def test_flood_limiter_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        FloodLimiter(rate_per_s=0, burst=10, now=0)


TICKER = StreamKey("BTC/USD", Channel.TICKER)


def test_first_session_subscribes_upstream_and_last_one_unsubscribes() -> None:
    table = StreamTable()
    assert table.add(TICKER, "a") == [UpstreamChange(True, TICKER)]
    assert table.add(TICKER, "b") == []
    assert table.add(TICKER, "b") == []  # idempotent
    assert table.sessions(TICKER) == {"a", "b"}
    assert table.remove(TICKER, "a") == []
    assert table.remove(TICKER, "a") == []  # idempotent
    assert table.remove(TICKER, "b") == [UpstreamChange(False, TICKER)]
    assert table.sessions(TICKER) == set()
    assert table.upstream() == []


def test_candle_intervals_are_separate_streams() -> None:
    table = StreamTable()
    m1 = StreamKey("BTC/USD", Channel.CANDLES, None, "1m")
    h1 = StreamKey("BTC/USD", Channel.CANDLES, None, "1h")
    assert table.add(m1, "a") == [UpstreamChange(True, m1)]
    assert table.add(h1, "a") == [UpstreamChange(True, h1)]
    assert sorted(table.upstream()) == sorted([m1, h1])


def test_book_streams_share_one_upstream_at_the_largest_depth() -> None:
    table = StreamTable()
    d5 = StreamKey("BTC/USD", Channel.BOOK, 5)
    d10 = StreamKey("BTC/USD", Channel.BOOK, 10)
    d3 = StreamKey("BTC/USD", Channel.BOOK, 3)
    assert table.add(d5, "a") == [UpstreamChange(True, d5)]
    assert table.add(d10, "b") == [UpstreamChange(False, d5), UpstreamChange(True, d10)]
    assert table.add(d3, "c") == []  # served from the deeper upstream book
    assert table.book_depth("BTC/USD") == 10
    assert table.upstream() == [d10]
    assert table.remove(d10, "b") == []  # others still read the book; it stays deep
    assert table.remove(d5, "a") == []
    assert table.remove(d3, "c") == [UpstreamChange(False, d10)]
    assert table.book_depth("BTC/USD") is None
