"""Market-data streams shared by the Market links of one Broker worker. Pure, no I/O.

Each Market worker subscribes once per stream it needs (`md_subscribe`); the Broker holds one
venue subscription per stream whatever the number of links, counts references per link, and
ends the venue subscription when the last link lets go (or disconnects).

Book streams are per instrument: book events do not say which depth they were built for, so
two depths of one instrument cannot share a link without mixing their update ids. The venue's
book is subscribed once per instrument, at the largest depth any link asked for; when a link
asks for more, the venue stream is restarted at the new depth (every link then gets a fresh
snapshot) and each Market trims to what its sessions want.

A link that joins a stream already running gets the current state at once — the last ticker,
a book snapshot rebuilt from the snapshot and deltas seen so far — so it never waits for the
venue to send a fresh snapshot.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from protocol.market import (
    BookDelta,
    BookSnapshot,
    Candle,
    CandleInterval,
    Channel,
    MarketEvent,
    Ticker,
    Trade,
)
from protocol.session import Subscription

LinkId = int


class StreamKey(NamedTuple):
    """One venue subscription."""

    instrument: str
    channel: Channel
    interval: CandleInterval | None = None


def stream_key(subscription: Subscription) -> StreamKey:
    """The venue stream that serves `subscription` (the book depth is not part of it)."""
    return StreamKey(subscription.instrument, subscription.channel, subscription.interval)


def event_key(event: MarketEvent) -> StreamKey:
    """The stream a market event belongs to."""
    if isinstance(event, Ticker):
        return StreamKey(event.instrument, Channel.TICKER)
    if isinstance(event, Trade):
        return StreamKey(event.instrument, Channel.TRADES)
    if isinstance(event, Candle):
        return StreamKey(event.instrument, Channel.CANDLES, event.interval)
    return StreamKey(event.instrument, Channel.BOOK)


@dataclass(frozen=True, slots=True)
class Joined:
    """What a subscription changed."""

    key: StreamKey
    venue: bool  # the venue stream must be started (at `depth`)
    link: bool  # the link was not on this stream before
    depth: int | None  # the venue stream's book depth (None: the adapter's default)
    depth_grew: bool  # a running venue book stream must be restarted at `depth`
    previous_depth: int | None = None  # the depth it ran at until now


@dataclass(frozen=True, slots=True)
class Left:
    """What an unsubscription changed: `venue` is True when the venue stream should end."""

    key: StreamKey
    venue: bool
    depth: int | None


class StreamTable:
    """Who listens to which stream, with reference counts per link."""

    def __init__(self) -> None:
        self._refs: dict[StreamKey, dict[LinkId, Counter[int | None]]] = {}
        self._depth: dict[StreamKey, int | None] = {}

    def subscribe(self, link: LinkId, subscription: Subscription) -> Joined:
        key = stream_key(subscription)
        links = self._refs.setdefault(key, {})
        first_for_venue = not links
        first_for_link = link not in links
        links.setdefault(link, Counter())[subscription.depth] += 1
        old = self._depth.get(key)
        new = _deeper(old, subscription.depth) if key.channel is Channel.BOOK else None
        self._depth[key] = new
        return Joined(key, first_for_venue, first_for_link, new,
                      not first_for_venue and new != old, old)

    def unsubscribe(self, link: LinkId, subscription: Subscription) -> Left | None:
        """None when the link did not hold this stream."""
        key = stream_key(subscription)
        links = self._refs.get(key)
        depths = links.get(link) if links else None
        if not links or depths is None or not depths[subscription.depth]:
            return None
        depths[subscription.depth] -= 1
        if not +depths:
            del links[link]
        if links:
            return Left(key, False, self._depth.get(key))
        return Left(key, True, self._end(key))

    def drop_link(self, link: LinkId) -> list[tuple[StreamKey, int | None]]:
        """Forget every subscription of a link; return the streams nobody listens to now,
        with the depth their venue stream ran at."""
        ended: list[tuple[StreamKey, int | None]] = []
        for key in list(self._refs):
            links = self._refs[key]
            if links.pop(link, None) is not None and not links:
                ended.append((key, self._end(key)))
        return ended

    def _end(self, key: StreamKey) -> int | None:
        del self._refs[key]
        return self._depth.pop(key, None)

    def links(self, key: StreamKey) -> dict[LinkId, Counter[int | None]]:
        """The links on a stream (read-only view; do not modify)."""
        return self._refs.get(key, {})

    def streams(self) -> list[StreamKey]:
        return list(self._refs)

    def streams_of(self, link: LinkId) -> list[StreamKey]:
        """The streams a link is on."""
        return [key for key, links in self._refs.items() if link in links]


def _deeper(current: int | None, wanted: int | None) -> int | None:
    if current is None:
        return wanted
    if wanted is None:
        return current
    return max(current, wanted)


@dataclass(slots=True)
class _Book:
    update_id: int
    ts: int
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)


class MarketCache:
    """The latest state of each running stream, to give a joining link a starting point."""

    def __init__(self) -> None:
        self._tickers: dict[str, Ticker] = {}
        self._books: dict[str, _Book] = {}

    def apply(self, event: MarketEvent) -> None:
        if isinstance(event, Ticker):
            self._tickers[event.instrument] = event
        elif isinstance(event, BookSnapshot):
            self._books[event.instrument] = _Book(
                event.update_id, event.ts, dict(event.bids), dict(event.asks))
        elif isinstance(event, BookDelta):
            book = self._books.get(event.instrument)
            if book is None:
                return
            if event.update_id != book.update_id + 1:
                # A gap: the cached book is no longer right. Joiners wait for the next snapshot.
                del self._books[event.instrument]
                return
            for levels, side in ((event.bids, book.bids), (event.asks, book.asks)):
                for price, qty in levels:
                    if qty:
                        side[price] = qty
                    else:
                        side.pop(price, None)
            book.update_id, book.ts = event.update_id, event.ts

    def forget(self, key: StreamKey) -> None:
        if key.channel is Channel.TICKER:
            self._tickers.pop(key.instrument, None)
        elif key.channel is Channel.BOOK:
            self._books.pop(key.instrument, None)

    def current(self, key: StreamKey) -> MarketEvent | None:
        """The state a joining link starts from, or None (trades and candles have none)."""
        if key.channel is Channel.TICKER:
            return self._tickers.get(key.instrument)
        if key.channel is Channel.BOOK:
            book = self._books.get(key.instrument)
            if book is None:
                return None
            return BookSnapshot(
                instrument=key.instrument,
                bids=sorted(book.bids.items(), reverse=True),
                asks=sorted(book.asks.items()),
                update_id=book.update_id,
                ts=book.ts,
            )
        return None
