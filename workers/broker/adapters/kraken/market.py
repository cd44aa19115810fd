"""Public market data: Kraken v2 frames in, canonical ``protocol`` events out (pure).

:class:`PublicFeed` is the core of the public WebSocket. The socket loop hands it every
parsed frame and sends whatever requests it returns; nothing else happens in the loop.

* ``book`` frames go through :class:`SpotBookBuilder` (CRC32 on every frame). A verified
  snapshot becomes a ``book_snapshot``; a verified update becomes a ``book_delta`` holding
  exactly the levels that changed within the subscribed depth (including levels Kraken
  pushed out of the window without a delete), so a consumer applying deltas keeps the
  same book as the adapter. On a checksum mismatch the feed asks to unsubscribe and
  subscribe the symbol again; the fresh snapshot that follows is published as a new
  ``book_snapshot``. Nothing is published for the symbol in between.
* ``trade`` frames are checked for ``trade_id`` contiguity; repeats are dropped and gaps
  counted (Kraken has no replay of missed public trades).
* ``ticker`` and ``ohlc`` frames become ``ticker`` and ``candle`` events; a candle is
  re-sent with ``closed=True`` when the next interval's first update arrives.

Book depths: Kraken offers 10/25/100/500/1000 levels; a stream asks for any depth, the
feed subscribes the next offered depth and publishes the requested number of levels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from protocol.market import (
    BookDelta,
    BookSnapshot,
    Candle,
    CandleInterval,
    Channel,
    MarketEvent,
    Side,
    Ticker,
    Trade,
)
from workers.broker.adapters.kraken import commands
from workers.broker.adapters.kraken.book import (
    BookChanged,
    ChecksumMismatch,
    SpotBook,
    SpotBookBuilder,
)
from workers.broker.adapters.kraken.errors import MalformedMessage, UnsupportedSymbol
from workers.broker.adapters.kraken.schemas import (
    BookMessage,
    MethodResponse,
    PairPrecision,
    SpotFrame,
    TickerMessage,
    TradeMessage,
    UnknownFrame,
    to_decimal,
)
from workers.broker.adapters.kraken.sequence import (
    ContiguityTracker,
    SequenceGap,
    SequenceRepeat,
)
from workers.broker.adapters.kraken.symbols import from_v2, to_v2
from workers.broker.adapters.kraken.wire import rfc3339_ns

MAX_SNAPSHOT_RETRIES = 3
"""Consecutive snapshots that fail their checksum before the feed stops resubscribing."""


@dataclass(frozen=True, slots=True)
class StreamKey:
    """One market-data stream: instrument, channel, and its depth or candle interval."""

    instrument: str
    channel: Channel
    depth: int | None = None
    interval: CandleInterval | None = None

    @classmethod
    def of(
        cls,
        instrument: str,
        channel: Channel | str,
        depth: int | None = None,
        interval: CandleInterval | str | None = None,
        *,
        default_depth: int = 10,
    ) -> StreamKey:
        """Normalise a subscription. Raises ``ValueError`` (a sentence naming the problem)
        for candles without an interval or a book deeper than Kraken offers."""
        channel = Channel(channel)
        if channel is Channel.BOOK:
            depth = depth or default_depth
            commands.kraken_depth(depth)  # validates
            return cls(instrument, channel, depth, None)
        if channel is Channel.CANDLES:
            if interval is None:
                raise ValueError("a candles subscription needs an interval")
            return cls(instrument, channel, None, CandleInterval(interval))
        return cls(instrument, channel, None, None)


@dataclass(slots=True)
class FeedStats:
    """Counters of what the feed verified and repaired (for logs and metrics)."""

    book_snapshots: int = 0
    book_deltas: int = 0
    checksums_verified: int = 0
    checksum_mismatches: int = 0
    book_resubscribes: int = 0
    trades: int = 0
    trade_gaps: int = 0
    trade_repeats: int = 0
    dropped_frames: int = 0


@dataclass(slots=True)
class FeedOutput:
    """What one frame produced: events to publish, requests to send, problems to log."""

    events: list[MarketEvent] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _BookStream:
    key: StreamKey
    symbol: str
    venue_depth: int
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    update_id: int = 0
    resubscribing: bool = False
    failed_snapshots: int = 0


def _view(book: SpotBook, depth: int) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
    return dict(book.bids(depth)), dict(book.asks(depth))


def _changes(
    old: dict[Decimal, Decimal], new: dict[Decimal, Decimal], *, descending: bool
) -> list[tuple[Decimal, Decimal]]:
    changed = [(price, qty) for price, qty in new.items() if old.get(price) != qty]
    changed += [(price, Decimal(0)) for price in old if price not in new]
    changed.sort(reverse=descending)
    return changed


class _CandleCloser:
    """Remembers the latest candle per (instrument, interval) to announce its close."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, CandleInterval], Candle] = {}

    def receive(self, candle: Candle) -> list[Candle]:
        key = (candle.instrument, candle.interval)
        last = self._last.get(key)
        if last is not None and candle.start < last.start:
            return []  # a late update of an interval already closed
        self._last[key] = candle
        if last is not None and candle.start > last.start:
            return [last.model_copy(update={"closed": True}), candle]
        return [candle]

    def forget(self, instrument: str, interval: CandleInterval) -> None:
        self._last.pop((instrument, interval), None)


class PublicFeed:
    """Subscriptions and normalisation of one public v2 connection (see module docstring).

    ``precisions`` (by v2 symbol) make the checksum re-format numbers with the pair's
    decimals; without them the exact wire text is used.
    """

    def __init__(
        self,
        *,
        precisions: Mapping[str, PairPrecision] | None = None,
        default_depth: int = 10,
    ) -> None:
        self.stats = FeedStats()
        self._precisions = dict(precisions or {})
        self._default_depth = default_depth
        self._streams: dict[StreamKey, None] = {}  # insertion-ordered set
        self._builder = SpotBookBuilder()
        self._books: dict[str, _BookStream] = {}  # by v2 symbol
        self._trade_ids: ContiguityTracker[str] = ContiguityTracker()  # by v2 symbol
        self._candles = _CandleCloser()

    # ------------------------------------------------------------ subscriptions

    @property
    def streams(self) -> list[StreamKey]:
        """Active streams, in subscription order."""
        return list(self._streams)

    def set_precisions(self, precisions: Mapping[str, PairPrecision]) -> None:
        """Adopt the venue's precisions; books built from later snapshots use them."""
        self._precisions = dict(precisions)
        for symbol, stream in self._books.items():
            self._builder.subscribe(symbol, stream.venue_depth, self._precisions.get(symbol))

    def add(self, key: StreamKey) -> list[dict[str, Any]]:
        """Start ``key``; returns the requests to send (none if already active).

        Raises ``ValueError`` when the instrument already has a book of another depth, and
        :class:`UnsupportedSymbol` for a name Kraken cannot spell.
        """
        if key in self._streams:
            return []
        symbol = to_v2(key.instrument)
        if key.channel is Channel.BOOK:
            existing = self._books.get(symbol)
            if existing is not None:
                raise ValueError(
                    f"{key.instrument} already streams a book {existing.key.depth} levels deep"
                )
            assert key.depth is not None
            stream = _BookStream(key, symbol, commands.kraken_depth(key.depth))
            self._books[symbol] = stream
            self._builder.subscribe(symbol, stream.venue_depth, self._precisions.get(symbol))
        self._streams[key] = None
        return [self._subscribe_request(key)]

    def remove(self, key: StreamKey) -> list[dict[str, Any]]:
        """Stop ``key``; returns the requests to send (none if it was not active)."""
        if key not in self._streams:
            return []
        request = self._subscribe_request(key)
        request["method"] = "unsubscribe"
        request["params"].pop("snapshot", None)
        del self._streams[key]
        symbol = to_v2(key.instrument)
        if key.channel is Channel.BOOK:
            self._books.pop(symbol, None)
            self._builder.forget(symbol)
        elif key.channel is Channel.TRADES:
            self._trade_ids.reset(symbol)
        elif key.channel is Channel.CANDLES and key.interval is not None:
            self._candles.forget(key.instrument, key.interval)
        return [request]

    def restart(self) -> list[dict[str, Any]]:
        """A new connection replaced the old one: every book waits for its new snapshot.
        Returns the subscribe requests of every active stream."""
        for symbol, stream in self._books.items():
            self._builder.forget(symbol)
            self._builder.subscribe(symbol, stream.venue_depth, self._precisions.get(symbol))
            stream.resubscribing = False
            stream.failed_snapshots = 0
        for key in self._streams:
            if key.channel is Channel.TRADES:
                self._trade_ids.reset(to_v2(key.instrument))
        return [self._subscribe_request(key) for key in self._streams]

    def is_synced(self, instrument: str) -> bool:
        """True when the instrument's book matches the venue's last checksum."""
        return self._builder.is_synced(to_v2(instrument))

    def book(self, instrument: str) -> SpotBook | None:
        """The adapter's current book of ``instrument`` (for diagnostics and tests)."""
        return self._builder.book(to_v2(instrument))

    def _subscribe_request(self, key: StreamKey) -> dict[str, Any]:
        symbol = [to_v2(key.instrument)]
        if key.channel is Channel.BOOK:
            stream = self._books[symbol[0]]
            return commands.subscribe("book", symbol, depth=stream.venue_depth, snapshot=True)
        if key.channel is Channel.TRADES:
            return commands.subscribe("trade", symbol, snapshot=False)
        if key.channel is Channel.TICKER:
            return commands.subscribe("ticker", symbol)
        assert key.interval is not None
        return commands.subscribe(
            "ohlc", symbol, interval=commands.OHLC_MINUTES[key.interval], snapshot=True
        )

    # ------------------------------------------------------------ frames

    def receive(self, frame: SpotFrame, now_ns: int) -> FeedOutput:
        """Handle one parsed frame from the public socket."""
        out = FeedOutput()
        try:
            if isinstance(frame, BookMessage):
                self._book(frame, now_ns, out)
            elif isinstance(frame, TradeMessage):
                self._trade(frame, now_ns, out)
            elif isinstance(frame, TickerMessage):
                self._ticker(frame, now_ns, out)
            elif isinstance(frame, UnknownFrame) and _channel(frame) == "ohlc":
                self._ohlc(frame.raw, now_ns, out)
            elif isinstance(frame, MethodResponse) and frame.success is False:
                out.problems.append(f"{frame.method} refused by Kraken: {frame.error}")
        except (MalformedMessage, UnsupportedSymbol, ValidationError, ValueError) as exc:
            self.stats.dropped_frames += 1
            out.problems.append(f"dropped a frame Kraken sent: {exc}")
        return out

    def _book(self, frame: BookMessage, now_ns: int, out: FeedOutput) -> None:
        for event in self._builder.receive(frame):
            stream = self._books.get(event.symbol)
            if stream is None:
                continue  # a book we no longer subscribe
            if isinstance(event, BookChanged):
                self.stats.checksums_verified += event.checksum is not None
                ts = _timestamp(frame, event.symbol, now_ns)
                self._publish_book(stream, event, ts, out)
            elif isinstance(event, ChecksumMismatch):
                self._resubscribe_book(stream, event, out)

    def _publish_book(
        self, stream: _BookStream, event: BookChanged, ts: int, out: FeedOutput
    ) -> None:
        depth = stream.key.depth or self._default_depth
        bids, asks = _view(event.book, depth)
        instrument = stream.key.instrument
        if event.is_snapshot:
            stream.resubscribing = False
            stream.failed_snapshots = 0
            stream.update_id += 1
            self.stats.book_snapshots += 1
            out.events.append(
                BookSnapshot(
                    instrument=instrument,
                    bids=sorted(bids.items(), reverse=True),
                    asks=sorted(asks.items()),
                    update_id=stream.update_id,
                    ts=ts,
                )
            )
        else:
            bid_changes = _changes(stream.bids, bids, descending=True)
            ask_changes = _changes(stream.asks, asks, descending=False)
            if bid_changes or ask_changes:
                stream.update_id += 1
                self.stats.book_deltas += 1
                out.events.append(
                    BookDelta(
                        instrument=instrument,
                        bids=bid_changes,
                        asks=ask_changes,
                        update_id=stream.update_id,
                        ts=ts,
                    )
                )
        stream.bids, stream.asks = bids, asks

    def _resubscribe_book(
        self, stream: _BookStream, event: ChecksumMismatch, out: FeedOutput
    ) -> None:
        self.stats.checksum_mismatches += 1
        if event.is_snapshot:
            stream.failed_snapshots += 1
        elif stream.resubscribing:
            return  # a resync is already on its way
        what = "snapshot" if event.is_snapshot else "update"
        if stream.failed_snapshots >= MAX_SNAPSHOT_RETRIES:
            out.problems.append(
                f"{stream.key.instrument}: {stream.failed_snapshots} snapshots in a row fail "
                f"their checksum (last expected {event.expected}, computed {event.computed}); "
                "not publishing this book until one verifies"
            )
            return
        stream.resubscribing = True
        self.stats.book_resubscribes += 1
        out.problems.append(
            f"{stream.key.instrument}: book {what} checksum mismatch (expected "
            f"{event.expected}, computed {event.computed}); resubscribing for a fresh snapshot"
        )
        params: dict[str, Any] = {"depth": stream.venue_depth}
        out.requests.append(commands.unsubscribe("book", [stream.symbol], **params))
        out.requests.append(commands.subscribe("book", [stream.symbol], snapshot=True, **params))

    def _trade(self, frame: TradeMessage, now_ns: int, out: FeedOutput) -> None:
        if frame.type == "snapshot":
            for symbol in {trade.symbol for trade in frame.data}:
                self._trade_ids.reset(symbol)
        for trade in frame.data:
            instrument = from_v2(trade.symbol)
            if StreamKey(instrument, Channel.TRADES) not in self._streams:
                continue
            result = self._trade_ids.observe(trade.symbol, trade.trade_id)
            if isinstance(result, SequenceRepeat):
                self.stats.trade_repeats += 1
                continue
            if isinstance(result, SequenceGap):
                self.stats.trade_gaps += 1
                out.problems.append(
                    f"{instrument}: {result.missed} public trade(s) missing before trade_id "
                    f"{result.received}"
                )
            self.stats.trades += 1
            out.events.append(
                Trade(
                    instrument=instrument,
                    trade_id=str(trade.trade_id),
                    price=trade.price,
                    qty=trade.qty,
                    taker_side=Side(trade.side),
                    ts=_parse_ts(trade.timestamp, now_ns),
                )
            )

    def _ticker(self, frame: TickerMessage, now_ns: int, out: FeedOutput) -> None:
        for item in frame.data:
            instrument = from_v2(item.symbol)
            if StreamKey(instrument, Channel.TICKER) not in self._streams:
                continue
            out.events.append(
                Ticker(
                    instrument=instrument,
                    bid=item.bid if item.bid > 0 else None,
                    bid_qty=item.bid_qty if item.bid > 0 else None,
                    ask=item.ask if item.ask > 0 else None,
                    ask_qty=item.ask_qty if item.ask > 0 else None,
                    last=item.last if item.last > 0 else None,
                    ts=_parse_ts(item.timestamp, now_ns),
                )
            )

    def _ohlc(self, raw: Mapping[str, Any], now_ns: int, out: FeedOutput) -> None:
        data = raw.get("data")
        if not isinstance(data, list):
            raise MalformedMessage("ohlc frame: data must be an array")
        if raw.get("type") == "snapshot":
            data = _latest_per_stream(data)
        for item in data:
            candle = _candle(item, now_ns)
            key = StreamKey(candle.instrument, Channel.CANDLES, None, candle.interval)
            if key in self._streams:
                out.events.extend(self._candles.receive(candle))


def _channel(frame: UnknownFrame) -> str | None:
    raw = frame.raw
    return raw.get("channel") if isinstance(raw, dict) else None


def _parse_ts(text: str | None, fallback: int) -> int:
    if not text:
        return fallback
    try:
        return rfc3339_ns(text)
    except MalformedMessage:
        return fallback


def _timestamp(frame: BookMessage, symbol: str, fallback: int) -> int:
    for data in frame.data:
        if data.symbol == symbol:
            return _parse_ts(data.timestamp, fallback)
    return fallback


def _latest_per_stream(items: list[Any]) -> list[Any]:
    latest: dict[tuple[Any, Any], Any] = {}
    for item in items:
        if isinstance(item, Mapping):
            key = (item.get("symbol"), item.get("interval"))
            if key not in latest or str(item.get("interval_begin")) >= str(
                latest[key].get("interval_begin")
            ):
                latest[key] = item
    return list(latest.values())


def _candle(item: Any, now_ns: int) -> Candle:
    if not isinstance(item, Mapping):
        raise MalformedMessage("ohlc candle must be an object")
    try:
        interval = commands.INTERVAL_OF_MINUTES[item["interval"]]
        begin = item["interval_begin"]
        symbol = item["symbol"]
    except (KeyError, TypeError) as exc:
        raise MalformedMessage(f"ohlc candle: missing or unknown field {exc}") from exc
    return Candle(
        instrument=from_v2(symbol),
        interval=interval,
        start=rfc3339_ns(begin),
        open=to_decimal(item.get("open"), "open"),
        high=to_decimal(item.get("high"), "high"),
        low=to_decimal(item.get("low"), "low"),
        close=to_decimal(item.get("close"), "close"),
        volume=to_decimal(item.get("volume"), "volume"),
    )
