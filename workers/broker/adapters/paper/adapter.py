"""The paper exchange behind the `Adapter` contract: a thin asyncio shell over the pure
matching engine and market data source.

`PaperVenue` is one exchange in this process: the engine, its market source, and the one task
that steps the market at `step_interval_s`. `PaperAdapter` is one account's session on a
venue; by default each adapter runs a private venue, and several adapters (accounts) may share
one venue to trade with each other.

Without a store the engine lives in memory only, keeping every order and fill: when the
process ends, the exchange and its ledger end with it. With one (`PaperStore`, as the exchange
process runs it) the accounts are durable and memory holds only each account's working orders
and newest finished orders and fills; the store answers for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

import structlog

from protocol.errors import ErrorCode
from protocol.market import (
    BookDelta,
    BookSnapshot,
    CandleInterval,
    Channel,
    InstrumentSpec,
    Ticker,
    Trade,
)
from protocol.orders import (
    BalancesSnapshot,
    Fill,
    NewOrder,
    OrderAccepted,
    OrderSnapshot,
    Position,
)
from workers.broker.adapters.base import (
    Adapter,
    AdapterEvent,
    ConnectionChanged,
    FatalAdapterError,
    OrderAck,
    OrderRejectedError,
)
from workers.broker.adapters.paper.candles import CandleBuilder
from workers.broker.adapters.paper.config import PaperConfig
from workers.broker.adapters.paper.engine import EngineEvent, MatchingEngine, OrderRefused
from workers.broker.adapters.paper.marketdata import (
    RandomWalkMarket,
    RecordedEvent,
    RecordingError,
    ReplayMarket,
    read_recording,
)
from workers.broker.adapters.paper.store import PaperStore

log = structlog.get_logger(__name__)

Clock = Callable[[], int]
DEFAULT_BOOK_DEPTH = 50
_STOP_TIMEOUT_S = 5.0


class _Listener(Protocol):
    @property
    def backlog(self) -> int: ...

    def deliver(self, events: Sequence[EngineEvent | ConnectionChanged]) -> None: ...


class PaperVenue:
    """One paper exchange. All engine calls happen on the event loop thread, so each engine
    operation and the delivery of its events are atomic with respect to other tasks."""

    def __init__(
        self,
        config: PaperConfig,
        *,
        clock: Clock = time.time_ns,
        recording: Iterable[RecordedEvent] | None = None,
        store: PaperStore | None = None,
    ) -> None:
        """`store`, when given, makes the accounts durable: what it holds is loaded now, and
        every change is written to it before anyone hears of it (`PaperStore`)."""
        self.config = config
        self._wall = clock
        self._replay_origin: tuple[int, int] | None = None  # (wall ns, recorded ns)
        self.engine = MatchingEngine(
            (i.spec() for i in config.instruments),
            maker_fee_bps=config.maker_fee_bps,
            taker_fee_bps=config.taker_fee_bps,
            clock=self.now,
            # What the engine lets go of memory, the store answers for.
            archive=store,
            retain_finished_orders=config.retain_finished_orders,
            retain_fills=config.retain_fills,
        )
        self._walk: RandomWalkMarket | None = None
        self._replay: ReplayMarket | None = None
        if recording is not None:
            self._replay = ReplayMarket(self.engine, recording)
        elif config.replay_file is None:
            self._walk = RandomWalkMarket(self.engine, config.instruments, seed=config.seed)
        self._store = store
        if store is not None:
            mids = store.load(self.engine)
            if self._walk is not None:
                self._walk.resume(mids)
        self._listeners: list[_Listener] = []
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ time

    def now(self) -> int:
        """Venue time in ns: the wall clock, or the recorded time while replaying."""
        if self._replay_origin is None:
            return self._wall()
        wall0, recorded0 = self._replay_origin
        return recorded0 + int((self._wall() - wall0) * self.config.replay_speed)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start stepping the market. Idempotent."""
        if self._task is not None:
            return
        if self._replay is None and self._walk is None:
            assert self.config.replay_file is not None
            path = self.config.replay_file
            try:
                text = await asyncio.to_thread(path.read_text, encoding="utf-8")
            except OSError as exc:
                raise FatalAdapterError(f"cannot read replay file {path}: {exc}") from exc
            self._replay = ReplayMarket(self.engine, read_recording(text.splitlines()))
        if self._replay is not None and self._replay_origin is None:
            try:
                first = self._replay.next_ts()
            except RecordingError as exc:
                raise FatalAdapterError(f"bad replay file: {exc}") from exc
            self._replay_origin = (self._wall(), first if first is not None else self._wall())
        self._task = asyncio.create_task(self._run(), name="paper-venue-market-steps")

    async def stop(self) -> None:
        """Stop stepping; waits up to 5 s for the task to end. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=_STOP_TIMEOUT_S)
        if not done:
            log.warning("paper_market_task_did_not_stop", timeout_s=_STOP_TIMEOUT_S)
        elif not task.cancelled():
            task.exception()  # a failure _run already logged; retrieved so asyncio stays quiet

    async def _run(self) -> None:
        interval = self.config.step_interval_s
        try:
            while True:
                await asyncio.sleep(interval)
                # A consumer that falls behind pauses the market rather than growing memory.
                if any(lst.backlog > self.config.max_backlog for lst in self._listeners):
                    continue
                if self._walk is None:
                    self.step()
                    continue
                # One instrument at a time, the loop free in between: a step of the whole
                # market took ~1.6 ms here (two instruments), and an order arriving meanwhile
                # waited for all of it.
                for index in range(self._walk.instrument_count):
                    if index:
                        await asyncio.sleep(0)
                    self._dispatch(self._walk.step_instrument(index), self._stored_mids())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("paper_market_step_failed")
            self._dispatch_notice(
                ConnectionChanged(False, f"paper market failed: {exc}", self.now())
            )
            raise

    def steer(self, instrument: str, target: Decimal, ticks_per_step: int = 1) -> Decimal:
        """Walk an instrument's price to `target` (see `RandomWalkMarket.steer`). Raises
        `ValueError` when the market is a replay, `KeyError` for an unknown instrument."""
        if self._walk is None:
            raise ValueError("the market is a replay: its prices come from the recording")
        return self._walk.steer(instrument, target, ticks_per_step)

    def mid(self, instrument: str) -> Decimal | None:
        """The random walk's mid price now (None for a replayed market)."""
        return None if self._walk is None else self._walk.mid(instrument)

    def step(self) -> list[EngineEvent]:
        """Advance the market once (one walk step, or the replay up to now) and deliver."""
        if self._walk is not None:
            events = self._walk.step()
        elif self._replay is not None:
            events = self._replay.advance(self.now())
        else:
            events = []
        self._dispatch(events, self._stored_mids())
        return events

    def _stored_mids(self) -> dict[str, int] | None:
        """The walk's mids, for a venue with a store (which keeps them), else None."""
        return self._walk.mids() if self._walk is not None and self._store is not None else None

    # ------------------------------------------------------------ accounts and orders

    def attach(self, listener: _Listener) -> None:
        self._listeners.append(listener)

    def detach(self, listener: _Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def ensure_account(self, account: str) -> None:
        """Open `account` with the configured starting cash unless it exists."""
        if not self.engine.ledger.has_account(account):
            self.engine.open_account(account, self.config.starting_cash)
            if self._store is not None:
                self._store.open_account(self.engine, account)

    def submit(self, request: NewOrder) -> list[EngineEvent]:
        return self._dispatch(self.engine.submit(request))

    def cancel(self, account: str, client_order_id: str) -> list[EngineEvent]:
        return self._dispatch(self.engine.cancel(account, client_order_id))

    def modify(
        self, account: str, client_order_id: str, qty: Decimal | None, price: Decimal | None
    ) -> list[EngineEvent]:
        return self._dispatch(self.engine.modify(account, client_order_id, qty=qty, price=price))

    def _dispatch(self, events: list[EngineEvent], mids: dict[str, int] | None = None
                  ) -> list[EngineEvent]:
        if self._store is not None:
            # Stored before anyone hears of it, so nothing acknowledged can be lost. A store
            # that fails stops the venue (its process exits and restarts from what is stored)
            # rather than let memory and disk part ways.
            try:
                self._store.record(self.engine, events, mids)
            except sqlite3.Error as exc:
                log.exception("paper_store_failed")
                self._dispatch_notice(ConnectionChanged(
                    False, f"paper exchange storage failed: {exc}", self.now()))
                raise
        if events:
            for listener in self._listeners:
                listener.deliver(events)
        return events

    def _dispatch_notice(self, notice: ConnectionChanged) -> None:
        for listener in self._listeners:
            listener.deliver([notice])


@dataclass(slots=True)
class _BookStream:
    depth: int
    update_id: int
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)


class PaperAdapter(Adapter):
    """One account's session on a paper venue."""

    venue = "paper"

    def __init__(
        self,
        config: PaperConfig | None = None,
        account: str = "paper",
        *,
        venue: PaperVenue | None = None,
        clock: Clock = time.time_ns,
    ) -> None:
        self.config = config or (venue.config if venue is not None else PaperConfig())
        self.account = account
        self._owns_venue = venue is None
        self._venue = venue if venue is not None else PaperVenue(self.config, clock=clock)
        self._queue: deque[AdapterEvent] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._connected = False
        self._tickers: set[str] = set()
        self._trades: set[str] = set()
        self._books: dict[tuple[str, int], _BookStream] = {}
        self._candles: dict[tuple[str, CandleInterval], CandleBuilder] = {}

    @property
    def paper_venue(self) -> PaperVenue:
        """The venue, e.g. to compare against its ledger in tests."""
        return self._venue

    @property
    def backlog(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        if self._closed:
            raise FatalAdapterError("this adapter was closed; create a new one")
        if self._connected:
            return
        self._venue.ensure_account(self.account)
        if self._owns_venue:
            await self._venue.start()
        self._venue.attach(self)
        self._connected = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._venue.detach(self)
        if self._owns_venue:
            await self._venue.stop()
        self._wakeup.set()

    def take_pending(self, limit: int) -> list[AdapterEvent]:
        """Up to `limit` queued events, oldest first, taken without waiting: the stream server
        writes the events an order request caused right before its answer."""
        queue = self._queue
        return [queue.popleft() for _ in range(min(limit, len(queue)))]

    async def events(self) -> AsyncIterator[AdapterEvent]:
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    # ------------------------------------------------------------ market data

    async def subscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        self._require_connected()
        engine = self._venue.engine
        if instrument not in engine.specs:
            raise OrderRejectedError(
                ErrorCode.UNKNOWN_INSTRUMENT, f"the paper venue does not list {instrument!r}"
            )
        if channel is Channel.TICKER and instrument not in self._tickers:
            self._tickers.add(instrument)
            self._push(engine.ticker(instrument))
        elif channel is Channel.TRADES:
            self._trades.add(instrument)
        elif channel is Channel.BOOK:
            key = (instrument, depth or DEFAULT_BOOK_DEPTH)
            if key not in self._books:
                snapshot = engine.book(instrument, key[1])
                stream = _BookStream(depth=key[1], update_id=snapshot.update_id)
                stream.bids, stream.asks = dict(snapshot.bids), dict(snapshot.asks)
                self._books[key] = stream
                self._push(snapshot)
        elif channel is Channel.CANDLES:
            if interval is None:
                raise OrderRejectedError(ErrorCode.MISSING_FIELD, "candles need an interval")
            self._candles.setdefault((instrument, interval), CandleBuilder(instrument, interval))

    async def unsubscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        if channel is Channel.TICKER:
            self._tickers.discard(instrument)
        elif channel is Channel.TRADES:
            self._trades.discard(instrument)
        elif channel is Channel.BOOK:
            self._books.pop((instrument, depth or DEFAULT_BOOK_DEPTH), None)
        elif channel is Channel.CANDLES and interval is not None:
            self._candles.pop((instrument, interval), None)

    # ------------------------------------------------------------ orders

    async def place_order(self, request: NewOrder) -> OrderAck:
        self._require_connected()
        self._require_own(request.account, request.client_order_id)
        try:
            events = self._venue.submit(request)
        except OrderRefused as exc:
            raise OrderRejectedError(
                exc.code, exc.message, client_order_id=request.client_order_id
            ) from exc
        accepted = events[0]
        assert isinstance(accepted, OrderAccepted) and accepted.order_id is not None
        return OrderAck(request.client_order_id, accepted.order_id, accepted.ts)

    async def cancel_order(self, client_order_id: str, *, order_id: str | None = None) -> None:
        self._require_connected()
        try:
            self._venue.cancel(self.account, client_order_id)
        except OrderRefused as exc:
            raise OrderRejectedError(
                exc.code, exc.message, client_order_id=client_order_id
            ) from exc

    async def modify_order(
        self,
        client_order_id: str,
        *,
        order_id: str | None = None,
        qty: Decimal | None = None,
        price: Decimal | None = None,
    ) -> None:
        self._require_connected()
        try:
            self._venue.modify(self.account, client_order_id, qty, price)
        except OrderRefused as exc:
            raise OrderRejectedError(
                exc.code, exc.message, client_order_id=client_order_id
            ) from exc

    # ------------------------------------------------------------ account state

    async def open_orders(self) -> list[OrderSnapshot]:
        self._require_connected()
        return self._venue.engine.open_orders(self.account)

    async def fills_since(self, ts: int) -> list[Fill]:
        self._require_connected()
        return self._venue.engine.fills(self.account, ts)

    async def instruments(self) -> list[InstrumentSpec]:
        return list(self._venue.engine.specs.values())

    async def balances(self) -> BalancesSnapshot:
        self._require_connected()
        ledger = self._venue.engine.ledger
        return BalancesSnapshot(
            account=self.account, cash=ledger.cash(self.account), ts=self._venue.now()
        )

    async def positions(self) -> list[Position]:
        self._require_connected()
        return [
            Position(
                account=self.account,
                instrument=name,
                qty=state.qty,
                avg_price=state.avg_price,
                realized_pnl=state.realized_pnl,
            )
            for name, state in self._venue.engine.ledger.positions(self.account).items()
        ]

    # ------------------------------------------------------------ delivery (venue → us)

    def deliver(self, events: Sequence[EngineEvent | ConnectionChanged]) -> None:
        """Called by the venue with every event of one operation, in order."""
        # One operation (a market step especially) may move the top of book many times;
        # subscribers get the resulting state once, after the operation's other events.
        books_touched: dict[str, None] = {}  # ordered, unlike a set of str
        tickers: dict[str, Ticker] = {}
        for event in events:
            if isinstance(event, ConnectionChanged):
                self._push(event)
            elif isinstance(event, Ticker):
                if event.instrument in self._tickers:
                    tickers[event.instrument] = event
            elif isinstance(event, Trade):
                if event.instrument in self._trades:
                    self._push(event)
                for (instrument, _), builder in self._candles.items():
                    if instrument == event.instrument:
                        for candle in builder.on_trade(event):
                            self._push(candle)
            elif isinstance(event, BookDelta):
                books_touched[event.instrument] = None
            elif isinstance(event, BookSnapshot):
                pass  # the venue never sends these; snapshots come from subscribe()
            elif event.account == self.account:
                self._push(event)
        for instrument in books_touched:
            self._push_book_changes(instrument)
        for ticker in tickers.values():
            self._push(ticker)

    def _push_book_changes(self, instrument: str) -> None:
        engine = self._venue.engine
        for (name, depth), stream in self._books.items():
            if name != instrument:
                continue
            now = engine.book(instrument, depth)
            bids, asks = dict(now.bids), dict(now.asks)
            changed_bids = _diff(stream.bids, bids)
            changed_asks = _diff(stream.asks, asks)
            if not changed_bids and not changed_asks:
                continue
            stream.bids, stream.asks = bids, asks
            stream.update_id += 1
            self._push(
                BookDelta(
                    instrument=instrument,
                    bids=sorted(changed_bids, reverse=True),
                    asks=sorted(changed_asks),
                    update_id=stream.update_id,
                    ts=now.ts,
                )
            )

    def _push(self, event: AdapterEvent) -> None:
        self._queue.append(event)
        self._wakeup.set()

    def _require_connected(self) -> None:
        if not self._connected or self._closed:
            raise FatalAdapterError("the paper adapter is not connected")

    def _require_own(self, account: str, client_order_id: str) -> None:
        if account != self.account:
            raise OrderRejectedError(
                ErrorCode.FORBIDDEN,
                f"this session trades account {self.account!r}, not {account!r}",
                client_order_id=client_order_id,
            )


def _diff(
    old: dict[Decimal, Decimal], new: dict[Decimal, Decimal]
) -> list[tuple[Decimal, Decimal]]:
    """Levels whose size changed, with 0 for levels that disappeared."""
    changed = [(p, q) for p, q in new.items() if old.get(p) != q]
    changed += [(p, Decimal(0)) for p in old if p not in new]
    return changed
