"""Where the paper market's liquidity and prices come from. Pure: no clock, no sleeping; the
adapter's shell calls `step()` (or `step_instrument()` for each instrument in turn) /
`advance()` at the pace it chooses.

Two sources, both trading through the `MatchingEngine` from house accounts, so an algo's
orders meet real resting liquidity and the tape is made of real engine trades:

* `RandomWalkMarket` — a seeded random walk of the mid price. Each step the house maker
  re-quotes a ladder of limit orders around the mid (cancelling quotes the mid left behind),
  and the house taker sends a random number of market orders (mean `activity`) that print
  trades. Same seed, same config, same clock → the same events.
* `ReplayMarket` — a recorded file of normalized market events. Recorded book levels become
  house-maker orders (so they can fill algo orders), recorded trades are printed to the tape.

Recording format (JSON Lines, UTF-8): one protocol market event per line, in its wire form,
with non-decreasing `ts`; `ticker`, `trade`, `book_snapshot` and `book_delta` are allowed.
Blank lines and lines starting with `#` are ignored. Example:

    # BTC/USD from venue X, 2024-05-01
    {"type":"book_snapshot","instrument":"BTC/USD","bids":[["60000.0","1.5"]],"asks":[["60000.5","2"]],"update_id":1,"ts":1714521600000000000}
    {"type":"trade","instrument":"BTC/USD","trade_id":"t1","price":"60000.5","qty":"0.1","taker_side":"buy","ts":1714521600100000000}
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from pydantic import ValidationError

from protocol.market import MARKET_EVENT, BookDelta, BookSnapshot, Side, Ticker, Trade
from protocol.orders import NewOrder, OrderType
from workers.broker.adapters.paper.config import PaperInstrument
from workers.broker.adapters.paper.engine import EngineEvent, MatchingEngine, OrderRefused

HOUSE_MAKER = "house-maker"
HOUSE_TAKER = "house-taker"
# Closed house orders are forgotten this often, so a long run does not grow memory.
_FORGET_EVERY_STEPS = 50

RecordedEvent = Ticker | Trade | BookSnapshot | BookDelta


# ---------------------------------------------------------------- random walk


@dataclass(slots=True)
class _WalkState:
    config: PaperInstrument
    mid_ticks: int
    # The house orders' fixed fields, copied with the rest filled in: `model_copy` costs
    # ~6 us an order against ~13 for `model_construct`, which deep-copies every default.
    quote: NewOrder
    take: NewOrder
    quotes: dict[tuple[Side, int], str] = field(default_factory=dict)  # level → client id
    # An operator's target (a drill, a test): the mid walks there, `steer_ticks` per step.
    target_ticks: int | None = None
    steer_ticks: int = 1


class RandomWalkMarket:
    """Synthetic liquidity and flow for every configured instrument."""

    def __init__(
        self,
        engine: MatchingEngine,
        instruments: Sequence[PaperInstrument],
        *,
        seed: int,
        maker_account: str = HOUSE_MAKER,
        taker_account: str = HOUSE_TAKER,
    ) -> None:
        self._engine = engine
        self._rng = random.Random(seed)
        self._maker = maker_account
        self._taker = taker_account
        for account in (maker_account, taker_account):
            if not engine.ledger.has_account(account):
                engine.open_account(account, quiet=True)
        self._states = [
            _WalkState(
                config=i,
                mid_ticks=int(i.initial_price / i.tick_size),
                # Built from validated config by this code: not validated again (tens a step).
                quote=NewOrder.model_construct(
                    client_order_id="m", account=maker_account, instrument=i.instrument,
                    side=Side.BUY, qty=i.lot_size, price=i.initial_price),
                take=NewOrder.model_construct(
                    client_order_id="t", account=taker_account, instrument=i.instrument,
                    side=Side.BUY, order_type=OrderType.MARKET, qty=i.lot_size),
            )
            for i in instruments
        ]
        self._next_id = 0
        self.steps = 0

    def mid(self, instrument: str) -> Decimal:
        """The walk's current mid price."""
        state = self._state(instrument)
        return state.mid_ticks * state.config.tick_size

    def mids(self) -> dict[str, int]:
        """Each instrument's mid in ticks (what `resume` takes)."""
        return {state.config.instrument: state.mid_ticks for state in self._states}

    def resume(self, mids: dict[str, int]) -> None:
        """Walk on from earlier mids (in ticks): an instrument no longer configured is
        ignored, one with a mid its ladder cannot sit at starts from its initial price."""
        for state in self._states:
            ticks = mids.get(state.config.instrument)
            if ticks is not None and ticks >= self._floor(state):
                state.mid_ticks = ticks

    def steer(self, instrument: str, target: Decimal, ticks_per_step: int = 1) -> Decimal:
        """Walk `instrument`'s mid to `target` (rounded to a tick), at most `ticks_per_step`
        ticks per step, in place of the random moves until it gets there. Returns the target
        as it will be reached. Raises `KeyError` for an unknown instrument, `ValueError` for
        a target the ladder cannot sit at (the whole book must stay at positive prices)."""
        if ticks_per_step < 1:
            raise ValueError("ticks_per_step must be at least 1")
        state = self._state(instrument)
        ticks = int(target / state.config.tick_size)
        if ticks < self._floor(state):
            raise ValueError(f"target {target} is too low for {instrument}'s ladder "
                             f"(lowest mid {self._floor(state) * state.config.tick_size})")
        state.target_ticks = ticks
        state.steer_ticks = ticks_per_step
        return ticks * state.config.tick_size

    def _state(self, instrument: str) -> _WalkState:
        for state in self._states:
            if state.config.instrument == instrument:
                return state
        raise KeyError(instrument)

    @staticmethod
    def _floor(state: _WalkState) -> int:
        config = state.config
        return config.spread_ticks + config.depth_levels * config.level_gap_ticks + 1

    @property
    def instrument_count(self) -> int:
        return len(self._states)

    def step(self) -> list[EngineEvent]:
        """Advance every instrument by one step; return what the engine reported."""
        events: list[EngineEvent] = []
        for index in range(len(self._states)):
            events += self.step_instrument(index)
        return events

    def step_instrument(self, index: int) -> list[EngineEvent]:
        """Advance the `index`th instrument by one step; return what the engine reported.
        One call per instrument, in order, is one `step()` (same events, same random draws):
        a shell may let other work run between them, so that an order waits for at most one
        instrument's requote rather than the whole market's."""
        state = self._states[index]
        events: list[EngineEvent] = []
        with self._engine.batch() as book_changes:
            self._move(state)
            self._requote(state, events)
            self._trade(state, events)
        events += book_changes
        if index == len(self._states) - 1:
            self.steps += 1
            if self.steps % _FORGET_EVERY_STEPS == 0:
                self._engine.forget_closed(self._maker)
                self._engine.forget_closed(self._taker)
        return events

    def _move(self, state: _WalkState) -> None:
        if state.target_ticks is not None:
            gap = state.target_ticks - state.mid_ticks
            state.mid_ticks += max(-state.steer_ticks, min(state.steer_ticks, gap))
            if state.mid_ticks == state.target_ticks:
                state.target_ticks = None
            return
        config = state.config
        sigma_ticks = config.volatility * state.mid_ticks
        move = round(self._rng.gauss(0.0, sigma_ticks)) if sigma_ticks > 0 else 0
        # Keep the whole ladder at positive prices whatever the walk does.
        state.mid_ticks = max(self._floor(state), state.mid_ticks + move)

    def _ladder(self, state: _WalkState) -> list[tuple[Side, int]]:
        config = state.config
        best_bid = state.mid_ticks - config.spread_ticks // 2
        best_ask = best_bid + config.spread_ticks
        gap = config.level_gap_ticks
        levels = [(Side.BUY, best_bid - i * gap) for i in range(config.depth_levels)]
        levels += [(Side.SELL, best_ask + i * gap) for i in range(config.depth_levels)]
        return levels

    def _requote(self, state: _WalkState, events: list[EngineEvent]) -> None:
        config = state.config
        wanted = self._ladder(state)
        wanted_set = set(wanted)
        # Cancel first so that new quotes never meet stale ones of the same house account.
        for level, cid in list(state.quotes.items()):
            working = self._engine.is_working(self._maker, cid)
            if level not in wanted_set or not working:
                del state.quotes[level]
                if working:
                    events += self._engine.cancel(self._maker, cid)
        low, high = config.level_lots
        for level in wanted:
            if level in state.quotes:
                continue
            side, ticks = level
            cid = self._new_id("m")
            request = state.quote.model_copy(update={
                "client_order_id": cid,
                "side": side,
                "qty": self._rng.randint(low, high) * config.lot_size,
                "price": ticks * config.tick_size,
            })
            events += self._engine.submit(request)
            if self._engine.is_working(self._maker, cid):
                state.quotes[level] = cid

    def _trade(self, state: _WalkState, events: list[EngineEvent]) -> None:
        config = state.config
        whole, fraction = divmod(config.activity, 1.0)
        count = int(whole) + (1 if self._rng.random() < fraction else 0)
        low, high = config.taker_lots
        for _ in range(count):
            side = Side.BUY if self._rng.random() < 0.5 else Side.SELL
            request = state.take.model_copy(update={
                "client_order_id": self._new_id("t"),
                "side": side,
                "qty": self._rng.randint(low, high) * config.lot_size,
            })
            events += self._engine.submit(request)

    def _new_id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}{self._next_id}"


# ---------------------------------------------------------------- recordings


class RecordingError(ValueError):
    """A recording line is not a replayable market event. Fix the file."""


def read_recording(lines: Iterable[str]) -> Iterator[RecordedEvent]:
    """Parse recording lines lazily. Raises `RecordingError` naming the line number for a
    malformed line, a non-replayable type, or a `ts` that goes backwards."""
    last_ts = -1
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            event = MARKET_EVENT.validate_python(orjson.loads(text))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise RecordingError(f"line {number}: {exc}") from exc
        if not isinstance(event, Ticker | Trade | BookSnapshot | BookDelta):
            raise RecordingError(f"line {number}: {event.type} events cannot be replayed")
        if event.ts < last_ts:
            raise RecordingError(f"line {number}: ts goes backwards")
        last_ts = event.ts
        yield event


def write_recording(events: Iterable[RecordedEvent]) -> Iterator[str]:
    """The recording lines (with trailing newline) for `events`."""
    for event in events:
        yield event.model_dump_json(exclude_none=True) + "\n"


@dataclass(slots=True)
class _MirrorState:
    bids: dict[Decimal, Decimal] = field(default_factory=dict)  # recorded price → qty
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    quotes: dict[tuple[Side, Decimal], str] = field(default_factory=dict)  # → house order
    has_book: bool = False  # once a book is seen, tickers no longer drive liquidity


class ReplayMarket:
    """Replays a recording into the engine. Call `advance(ts)` with the recorded time reached;
    every event with `ts <= until` is applied, in order."""

    def __init__(
        self,
        engine: MatchingEngine,
        events: Iterable[RecordedEvent],
        *,
        maker_account: str = HOUSE_MAKER,
    ) -> None:
        self._engine = engine
        self._events = iter(events)
        self._pending: RecordedEvent | None = None
        self._maker = maker_account
        if not engine.ledger.has_account(maker_account):
            engine.open_account(maker_account, quiet=True)
        self._mirrors: dict[str, _MirrorState] = {}
        self._next_id = 0
        self.skipped = 0  # recorded levels the engine refused (off tick, off lot, unknown)
        self.finished = False

    def next_ts(self) -> int | None:
        """Recorded time of the next event, or None when the recording is over."""
        if self._pending is None:
            self._pending = next(self._events, None)
            if self._pending is None:
                self.finished = True
        return None if self._pending is None else self._pending.ts

    def advance(self, until: int) -> list[EngineEvent]:
        """Apply every recorded event up to `until` (ns, recorded time)."""
        out: list[EngineEvent] = []
        while (ts := self.next_ts()) is not None and ts <= until:
            event, self._pending = self._pending, None
            assert event is not None
            self._apply(event, out)
        return out

    def _apply(self, event: RecordedEvent, out: list[EngineEvent]) -> None:
        if event.instrument not in self._engine.specs:
            self.skipped += 1
            return
        mirror = self._mirrors.setdefault(event.instrument, _MirrorState())
        if isinstance(event, Trade):
            out.append(event)  # the recorded tape, printed as it happened
            return
        if isinstance(event, Ticker):
            if mirror.has_book:
                return
            bids = {event.bid: event.bid_qty} if event.bid and event.bid_qty else {}
            asks = {event.ask: event.ask_qty} if event.ask and event.ask_qty else {}
            self._replace(event.instrument, mirror, bids, asks, out)
            return
        mirror.has_book = True
        if isinstance(event, BookSnapshot):
            self._replace(event.instrument, mirror, dict(event.bids), dict(event.asks), out)
            return
        bids, asks = dict(mirror.bids), dict(mirror.asks)
        for levels, target in ((event.bids, bids), (event.asks, asks)):
            for price, qty in levels:
                if qty == 0:
                    target.pop(price, None)
                else:
                    target[price] = qty
        self._replace(event.instrument, mirror, bids, asks, out)

    def _replace(
        self,
        instrument: str,
        mirror: _MirrorState,
        bids: dict[Decimal, Decimal],
        asks: dict[Decimal, Decimal],
        out: list[EngineEvent],
    ) -> None:
        old = {(Side.BUY, p): q for p, q in mirror.bids.items()}
        old |= {(Side.SELL, p): q for p, q in mirror.asks.items()}
        new = {(Side.BUY, p): q for p, q in bids.items()}
        new |= {(Side.SELL, p): q for p, q in asks.items()}
        mirror.bids, mirror.asks = bids, asks
        # Removals and reductions first, so additions cannot meet a stale house quote.
        removals = sorted((k for k in old if new.get(k, 0) < old[k]), key=_level_order)
        additions = sorted((k for k in new if new[k] > old.get(k, 0)), key=_level_order)
        for level in removals + additions:
            self._set_level(instrument, mirror, level, new.get(level, Decimal(0)), out)

    def _set_level(
        self,
        instrument: str,
        mirror: _MirrorState,
        level: tuple[Side, Decimal],
        qty: Decimal,
        out: list[EngineEvent],
    ) -> None:
        cid = mirror.quotes.get(level)
        if cid is not None and not self._engine.is_working(self._maker, cid):
            cid = None  # filled by an algo, or cancelled by self-trade prevention
            del mirror.quotes[level]
        try:
            if cid is not None and qty == 0:
                del mirror.quotes[level]
                out += self._engine.cancel(self._maker, cid)
            elif cid is not None:
                current = self._engine.order(self._maker, cid)
                assert current is not None
                # The recorded size is what should rest; fills by algos stay counted.
                out += self._engine.modify(self._maker, cid, qty=current.filled_qty + qty)
            elif qty > 0:
                side, price = level
                self._next_id += 1
                cid = f"r{self._next_id}"
                out += self._engine.submit(
                    NewOrder(
                        client_order_id=cid,
                        account=self._maker,
                        instrument=instrument,
                        side=side,
                        qty=qty,
                        price=price,
                    )
                )
                if self._engine.is_working(self._maker, cid):
                    mirror.quotes[level] = cid
        except OrderRefused:
            self.skipped += 1


def _level_order(level: tuple[Side, Decimal]) -> tuple[int, Decimal]:
    side, price = level
    return (0, price) if side is Side.SELL else (1, -price)
